//! The local backend decodes concurrent requests as one batch; a sequence's tokens must not
//! depend on that. Four different prompts, as one batch and through the decoding thread from
//! four threads at once, give exactly what each gives alone — greedy and seeded sampling; and a
//! prompt started from a finished one's kept chunks gives what reading it whole gives.

use candle_transformers::generation::Sampling;
use pipe::chat::local::{GenRequest, LocalModel};
use pipe::chat::{Message, Role};

mod common;
use common::{SMOLLM2, model};

fn requests(m: &LocalModel, sampling: Sampling) -> Vec<GenRequest> {
    [
        "Write pytest tests for a Stack class with push, pop, peek and size.",
        "Implement an LRU cache class in Python with get and put.",
        "Write a Python function that checks whether a password is strong.",
        "Explain in two sentences what a queue is.",
    ]
    .iter()
    .enumerate()
    .map(|(i, a)| {
        let text = m.render(&[Message::new(Role::User, *a)]).unwrap();
        GenRequest {
            prompt: m.tokenizer().encode(&text).unwrap(),
            max_tokens: 40,
            sampling: sampling.clone(),
            seed: 100 + i as u64,
        }
    })
    .collect()
}

fn check(sampling: Sampling) {
    let m = LocalModel::load(&model(SMOLLM2)).unwrap();
    let reqs = requests(&m, sampling);
    let alone: Vec<_> = reqs
        .iter()
        .map(|r| m.generate_batch(std::slice::from_ref(r)).unwrap().remove(0))
        .collect();
    assert!(alone.iter().all(|g| !g.ids.is_empty()));
    assert!(
        alone.windows(2).all(|w| w[0].ids != w[1].ids),
        "four different prompts give four different replies"
    );
    let batch = m.generate_batch(&reqs).unwrap();
    assert_eq!(batch, alone, "a batch of 4 against each alone");
    // Through the decoding thread, from four threads at once (arrivals interleave).
    let concurrent: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = reqs
            .iter()
            .map(|r| {
                let m = &m;
                s.spawn(move || {
                    m.generate(&r.prompt, r.max_tokens, r.sampling.clone(), r.seed)
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        concurrent, alone,
        "four concurrent requests against each alone"
    );
}

#[test]
fn a_batch_decodes_what_each_prompt_decodes_alone_greedy() {
    check(Sampling::ArgMax);
}

#[test]
fn a_batch_decodes_what_each_prompt_decodes_alone_seeded_sampling() {
    check(Sampling::TopP {
        p: 0.95,
        temperature: 0.7,
    });
}

/// A retry's prompt repeats the first one and adds feedback. The decoding thread keeps the
/// chunks of a finished prompt and starts the retry from them: it must then sample exactly
/// what reading the whole retry prompt gives.
#[test]
fn a_prompt_that_extends_a_finished_one_reuses_its_chunks_and_decodes_the_same() {
    let m = LocalModel::load(&model(SMOLLM2)).unwrap();
    let task = "Write pytest tests for a Stack class. The class has push(x), which adds x on \
                top; pop(), which removes and returns the top item and raises IndexError when \
                the stack is empty; peek(), which returns the top item without removing it and \
                raises IndexError when empty; size(), which returns the number of items; and \
                is_empty(), which says whether there are none. Cover every method, the error \
                cases, and a sequence of pushes and pops that checks the order is last in, \
                first out. Use plain pytest functions, no classes, and import Stack from stack.";
    let first = m
        .tokenizer()
        .encode(&m.render(&[Message::new(Role::User, task)]).unwrap())
        .unwrap();
    let retry_text =
        format!("{task}\n\nPrevious attempts:\n1. SyntaxError: invalid syntax (line 3). Fix it.");
    let retry = m
        .tokenizer()
        .encode(&m.render(&[Message::new(Role::User, &retry_text)]).unwrap())
        .unwrap();
    let shared = first.iter().zip(&retry).take_while(|(a, b)| a == b).count();
    assert!(
        shared >= 128,
        "the prompts share {shared} tokens: too few for two chunks"
    );
    let sampling = Sampling::TopP {
        p: 0.95,
        temperature: 0.9,
    };
    let before = m.reused_positions();
    m.generate(&first, 8, sampling.clone(), 1).unwrap();
    let reused = m.generate(&retry, 40, sampling.clone(), 2).unwrap();
    assert!(
        m.reused_positions() - before >= shared / 64 * 64,
        "the retry reused {} positions of {shared} shared",
        m.reused_positions() - before
    );
    let whole = m
        .generate_batch(&[GenRequest {
            prompt: retry,
            max_tokens: 40,
            sampling,
            seed: 2,
        }])
        .unwrap()
        .remove(0);
    assert!(!whole.ids.is_empty());
    assert_eq!(
        reused, whole,
        "from kept chunks against reading the whole prompt"
    );
}
