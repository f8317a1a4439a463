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
