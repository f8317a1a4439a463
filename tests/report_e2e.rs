//! extract → format → report on real trial records (made through a scripted OpenAI-compatible
//! server and the real sandboxed guards): the files land in `reports/`, the HTML parses, the
//! JSONL turns are the prompts the model saw, and a rebuild with nothing changed does nothing.

mod common;

use common::Project;
use common::scripted::{Reply, Request, Server};
use serde_json::{Value, json};

const TESTS: &str = "from implementation import Stack\n\n\ndef test_push_pop():\n    s = Stack()\n    s.push(1)\n    assert s.pop() == 1\n\n\ndef test_size():\n    assert Stack().size() == 0\n";
const IMPL: &str = "class Stack:\n    def __init__(self):\n        self.i = []\n\n    def push(self, x):\n        self.i.append(x)\n\n    def pop(self):\n        return self.i.pop()\n\n    def size(self):\n        return len(self.i)\n";

fn build(p: &Project, args: &[&str]) -> Value {
    let o = p.real(args).output().unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn report_of_a_real_trial_run_renders_and_rebuilds_nothing() {
    // Stack trials pass; calculator's implementations lack the class the tests import.
    let srv = Server::start(|r: &Request| {
        if !r.is_chat() {
            return Reply::Json(404, json!({}), vec![]);
        }
        let code = if r.is_tests_step() {
            TESTS
        } else if r.user().contains("`Calculator`") {
            "class Calculator:\n    pass\n"
        } else {
            IMPL
        };
        Reply::Content(format!("```python\n{code}```"))
    });
    let p = Project::openai(&srv.url, &["stack", "calculator"], 3, 0, "");
    p.baseline_only();
    let rep = build(&p, &["build", "report", "format", "--json"]);
    let computed: u64 = rep["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["computed"].as_u64().unwrap())
        .sum();
    assert_eq!(
        computed,
        6 + 1 + 1 + 1,
        "trials, extract, format, report: {rep}"
    );

    let dir = p.path("reports");
    for f in [
        "report.md",
        "report.html",
        "trials.csv",
        "trials.jsonl",
        "summary.csv",
        "summary.json",
    ] {
        assert!(dir.join(f).exists(), "{f} exported");
    }
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let ids = common::html_ids(&html);
    for chart in common::BASELINE_CHARTS {
        assert!(ids.iter().any(|i| i == chart), "{chart} in {ids:?}");
    }
    assert!(html.contains("pipe show trial/stack/base/0"));
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("3/3") && md.contains("0/3"), "{md}");

    // extract kept the three stack trials' tests… but they are identical: one sample.
    let trials = p.trials("trial");
    let first = &trials["stack/base/0"];
    // format's user turn is the recorded prompt, byte for byte.
    let o = p.real(&["show", "format", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    let train_hash = find_output(&shown, "train.jsonl")
        .unwrap_or_else(|| panic!("format has train.jsonl: {shown}"));
    let text = std::fs::read_to_string(p.path(&format!(
        "store/objects-v1/{}/{train_hash}",
        &train_hash[..2]
    )))
    .unwrap();
    let val_hash = find_output(&shown, "val.jsonl").unwrap();
    let val =
        std::fs::read_to_string(p.path(&format!("store/objects-v1/{}/{val_hash}", &val_hash[..2])))
            .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .chain(val.lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "identical tests are one sample");
    assert_eq!(
        lines[0]["messages"][1]["content"],
        first["attempts"][0]["prompt"]
    );
    assert_eq!(lines[0]["messages"][0]["content"], first["system"]);
    assert_eq!(
        lines[0]["messages"][2]["content"],
        first["attempts"][0]["reply"]
    );

    // Nothing changed: nothing is computed, no request is made, the files stay.
    let before = srv.chats().len();
    let rep = build(&p, &["build", "report", "format", "--json"]);
    let computed: u64 = rep["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["computed"].as_u64().unwrap())
        .sum();
    assert_eq!(computed, 0, "{rep}");
    assert_eq!(srv.chats().len(), before);
    assert_eq!(
        std::fs::read_to_string(dir.join("report.html")).unwrap(),
        html
    );
}

/// The hash of an output named `name` anywhere in `pipe show --json`'s answer.
fn find_output(v: &Value, name: &str) -> Option<String> {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(h)) = m.get(name)
                && h.len() == 64
            {
                return Some(h.clone());
            }
            m.values().find_map(|x| find_output(x, name))
        }
        Value::Array(a) => a.iter().find_map(|x| find_output(x, name)),
        _ => None,
    }
}

/// A scripted run whose failures have known causes, one task each, through the real guards
/// and the report stage: the cause table, trials.csv and the transcripts say what happened.
#[test]
fn failure_causes_of_a_scripted_run() {
    use common::scripted::{IMPL, completion, py};
    let srv = Server::start(|r: &Request| {
        if !r.is_chat() {
            return Reply::Json(404, json!({}), vec![]);
        }
        let u = r.user();
        let task = [
            "Stack",
            "Queue",
            "Calculator",
            "LRUCache",
            "SimpleTemplate",
            "PasswordValidator",
        ]
        .into_iter()
        .find(|c| u.contains(&format!("`{c}`")))
        .unwrap_or("?");
        if r.is_tests_step() {
            match task {
                // pytest used, never imported: a NameError once the implementation runs.
                "Stack" => Reply::Content(py(
                    "from implementation import Stack\n\n\ndef test_pop_empty():\n    with pytest.raises(IndexError):\n        Stack().pop()\n",
                )),
                // Cut off by max_tokens mid-definition.
                "Queue" => {
                    let mut c =
                        completion("```python\nfrom implementation import Queue\n\ndef test_q(:\n");
                    c["choices"][0]["finish_reason"] = json!("length");
                    Reply::Json(200, c, vec![])
                }
                "Calculator" => Reply::Content(py("def test_add(:\n    pass\n")),
                "LRUCache" => Reply::Content(py("from implementation import LRUCache\n")),
                "SimpleTemplate" => Reply::Content(py(
                    "from implementation import SimpleTemplate\n\n\ndef test_render():\n    assert SimpleTemplate('a').render() == 'a'\n",
                )),
                _ => Reply::Content(py(
                    "from implementation import PasswordValidator\n\n\ndef test_ok():\n    assert PasswordValidator().validate('x')\n",
                )),
            }
        } else {
            match task {
                "Stack" => Reply::Content(py(IMPL)),
                "SimpleTemplate" => Reply::Content(py(
                    "class SimpleTemplate:\n    def __init__(self, t):\n        self.t = t\n\n    def render(self):\n        return 'b'\n",
                )),
                "LRUCache" => Reply::Content(py("class LRUCache:\n    pass\n")),
                _ => Reply::Content(py(
                    "class PasswordValidator:\n    def validate(self, pw):\n        raise KeyError(pw)\n",
                )),
            }
        }
    });
    let tasks = common::TASKS;
    let p = Project::openai(&srv.url, &tasks, 1, 0, "");
    p.baseline_only();
    build(&p, &["build", "report", "--json"]);
    let dir = p.path("reports");

    let mut rd = csv::Reader::from_path(dir.join("trials.csv")).unwrap();
    let head = rd.headers().unwrap().clone();
    let col = |n: &str| head.iter().position(|h| h == n).unwrap();
    let mut causes = std::collections::BTreeMap::new();
    for r in rd.records() {
        let r = r.unwrap();
        causes.insert(
            r[col("task")].to_string(),
            (
                r[col("cause")].to_string(),
                r[col("failed_step")].to_string(),
                r[col("truncated_attempts")].to_string(),
            ),
        );
    }
    let want = [
        ("stack", "name_error", "impl", "0"),
        ("queue", "truncated", "tests", "1"),
        ("calculator", "syntax", "tests", "0"),
        ("lru_cache", "no_tests", "impl", "0"),
        ("template", "assertion", "impl", "0"),
        ("password", "exception", "impl", "0"),
    ];
    for (task, cause, step, cut) in want {
        assert_eq!(
            causes[task],
            (cause.to_string(), step.to_string(), cut.to_string()),
            "{task}"
        );
    }

    // The same counts in summary.csv's cause columns, per task.
    let mut rd = csv::Reader::from_path(dir.join("summary.csv")).unwrap();
    let head = rd.headers().unwrap().clone();
    let col = |n: &str| head.iter().position(|h| h == n).unwrap();
    for r in rd.records() {
        let r = r.unwrap();
        if &r[1] != "base" {
            continue;
        }
        if let Some((_, cause, ..)) = want.iter().find(|w| w.0 == &r[0]) {
            assert_eq!(&r[col(&format!("cause_{cause}"))], "1", "{r:?}");
        } else {
            assert_eq!(&r[0], "overall");
            assert_eq!(&r[col("truncated_attempts")], "1");
            assert_eq!(&r[col("failed_at_tests")], "2");
            assert_eq!(&r[col("failed_at_impl")], "4");
        }
    }

    // The page: the cause table, each trial's transcript with the model's own words, and how
    // the trials were run.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    common::html_ids(&html);
    for want in [
        "Why trials failed",
        "NameError",
        "truncated reply",
        "no tests ran",
        "id=\"t-stack-base-0\"",
        "with pytest.raises(IndexError):",
        "name &#39;pytest&#39; is not defined",
        "cut off at max_tokens",
        "test-model",
        "max_tokens",
    ] {
        assert!(html.contains(want), "report.html lacks {want}");
    }
}
