//! The prompt templates: files in the repository (`prompts/`), rendered with minijinja from
//! the task spec. Their text is part of every trial's key, so editing a prompt reruns exactly
//! the trials it changes.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior, context};
use serde_json::{Value, json};

const SYSTEM: &str = include_str!("../../prompts/system.txt");
const TESTS: &str = include_str!("../../prompts/tests.j2");
const IMPL: &str = include_str!("../../prompts/impl.j2");

/// The compiled templates.
pub struct Prompts {
    env: Environment<'static>,
}

/// A template that does not render (a bug in a template, or a task missing a field).
#[derive(Debug, thiserror::Error)]
#[error("prompt template `{template}`: {source}")]
pub struct PromptError {
    template: &'static str,
    #[source]
    source: minijinja::Error,
}

impl Prompts {
    /// The templates shipped with this build of pipe.
    pub fn builtin() -> Prompts {
        let mut env = Environment::new();
        // A misspelt variable must fail loudly, not render as an empty string.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters"),
        );
        env.add_template("tests", TESTS).expect("tests.j2 parses");
        env.add_template("impl", IMPL).expect("impl.j2 parses");
        Prompts { env }
    }

    /// Their text, as keys see it.
    pub fn identity() -> Value {
        json!({ "system": SYSTEM, "tests": TESTS, "impl": IMPL })
    }

    /// The system prompt.
    pub fn system(&self) -> &'static str {
        SYSTEM.trim_end()
    }

    /// The test-writing prompt, with the feedback of every earlier failed attempt.
    pub fn tests(&self, task: &Value, previous: &[String]) -> Result<String, PromptError> {
        self.render(
            "tests",
            context! { task => Serde(task), previous => Serde(previous) },
        )
    }

    /// The implementation prompt for the accepted tests.
    pub fn implementation(
        &self,
        task: &Value,
        tests: &str,
        previous: &[String],
    ) -> Result<String, PromptError> {
        self.render(
            "impl",
            context! { task => Serde(task), tests => tests.trim_end(), previous => Serde(previous) },
        )
    }

    fn render(&self, name: &'static str, cx: minijinja::Value) -> Result<String, PromptError> {
        let t = self.env.get_template(name).expect("added above");
        t.render(cx)
            .map(|s| s.trim_end().to_string())
            .map_err(|source| PromptError {
                template: name,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack() -> Value {
        let text = include_str!("../../tasks/stack.json");
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn renders_spec_and_feedback() {
        let p = Prompts::builtin();
        let first = p.tests(&stack(), &[]).unwrap();
        assert!(first.contains("from implementation import Stack"));
        assert!(first.contains("- pop() on an empty stack raises IndexError"));
        assert!(!first.contains("Previous attempts"));
        let fb = vec!["SyntaxError: invalid syntax (line 3)".to_string()];
        let retry = p.tests(&stack(), &fb).unwrap();
        assert!(retry.starts_with(&first));
        assert!(retry.contains("## Previous attempts"));
        assert!(retry.contains("### Attempt 1\nSyntaxError: invalid syntax (line 3)"));
        let imp = p
            .implementation(&stack(), "def test_a():\n    pass\n", &[])
            .unwrap();
        assert_eq!(imp.matches("def test_a()").count(), 1, "tests appear once");
    }

    #[test]
    fn a_missing_field_is_an_error() {
        let mut t = stack();
        t.as_object_mut().unwrap().remove("description");
        assert!(Prompts::builtin().tests(&t, &[]).is_err());
    }
}
