//! The content phase always finishes: a stage task that ends without passing `End` on — aborted,
//! or panicking outside the stage's calls — closes the inboxes after it, and its `on_error`
//! policy gives the verdict.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::chain::stage::{EnvelopeEvent, StageFactory};
use crate::chain::test_stage::TestStageFactory;
use crate::flow::gate::FlowRegistry;
use crate::flow::Watermarks;
use crate::metrics::Metrics;
use crate::spool::SpoolBudget;

/// Panics while making its `headers` future, before `call` can guard it: a panic in the stage
/// task outside any call.
struct PanicsBeforeTheCall;

#[async_trait]
impl Stage for PanicsBeforeTheCall {
    async fn envelope(&mut self, _event: &EnvelopeEvent) -> Result<Verdict, StageError> {
        Ok(Verdict::Continue)
    }

    fn headers<'a, 'b, 'f>(
        &'a mut self,
        _headers: &'b HeaderSection,
    ) -> Pin<Box<dyn Future<Output = Result<Reaction, StageError>> + Send + 'f>>
    where
        'a: 'f,
        'b: 'f,
    {
        panic!("no future for you")
    }

    async fn body(&mut self, _chunk: Bytes) -> Result<Reaction, StageError> {
        Ok(Reaction::carry_on())
    }

    async fn end(&mut self) -> Result<Reaction, StageError> {
        Ok(Reaction::carry_on())
    }
}

fn stage(name: &str, on_error: OnError, instance: Box<dyn Stage>) -> RunningStage {
    let spec = StageSpec {
        name: name.into(),
        kind: crate::config::stages::StageKind::Test,
        on_error,
        timeout: Duration::from_secs(5),
        content: crate::chain::answer::ContentRules {
            max_message_size: 50 << 20,
            bare_line_endings: crate::config::BareLineEndings::Normalize,
        },
        factory: Box::new(TestStageFactory::new(Default::default())),
        meters: Metrics::default().stage_meters(name),
        metrics: Arc::new(Metrics::default()),
    };
    RunningStage::new(Arc::new(spec), instance)
}

fn pass(name: &str) -> RunningStage {
    let (_, end_of_data) = EndOfData::channel();
    let context = crate::chain::stage::MessageContext {
        end_of_data,
        transaction_id: "test.1".into(),
        session: Default::default(),
    };
    stage(name, OnError::Tempfail, TestStageFactory::new(Default::default()).instantiate(&context).unwrap())
}

/// Runs a message through these stages, with `prepare` applied to the run first; the outcome
/// must come within a bound (the old runner waited forever here).
async fn run(stages: Vec<RunningStage>, prepare: impl FnOnce(&mut ContentRun)) -> ContentOutcome {
    let names = stages.iter().map(|s| s.spec.name.clone()).collect();
    let flow = FlowRegistry::default().open(1, Watermarks { high: 1 << 20, low: 1 << 10 });
    let spool = Spool::new(1 << 20, SpoolBudget::new(1 << 20), None);
    let (end_of_data, _) = EndOfData::channel();
    let mut run = ContentRun::start(stages, spool, flow, Arc::new(Decision::new(names)), end_of_data);
    prepare(&mut run);
    run.push(b"Subject: x\r\n\r\nbody\r\n".to_vec());
    tokio::time::timeout(Duration::from_secs(20), run.finish()).await.expect("finish must not hang").outcome
}

#[tokio::test]
async fn an_aborted_stage_task_closes_the_inboxes_after_it() {
    // tasks[0] is the spool's, tasks[1] the last stage's.
    let outcome = run(vec![pass("first"), pass("second")], |run| run.tasks[1].abort()).await;
    assert!(matches!(outcome, ContentOutcome::Failed(why) if why.contains("stage task")));
}

#[tokio::test]
async fn a_panic_outside_the_calls_is_the_stages_on_error_verdict() {
    let brittle = || Box::new(PanicsBeforeTheCall);
    let outcome = run(vec![pass("first"), stage("brittle", OnError::Reject, brittle())], |_| {}).await;
    match outcome {
        ContentOutcome::Decided { stage, verdict: Verdict::Reject(reply), .. } => {
            assert_eq!((stage.as_str(), reply.code), ("brittle", 554))
        }
        _ => panic!("expected brittle's on_error reject"),
    }
    // Accept cannot pass the message on: the item the task held is lost, so the chain failed.
    let outcome = run(vec![stage("brittle", OnError::Accept, brittle()), pass("last")], |_| {}).await;
    assert!(matches!(outcome, ContentOutcome::Failed(_)));
}

#[test]
fn accept_fails_open_only_for_a_stage_that_changed_nothing() {
    assert_eq!(OnError::Accept.verdict("s", false), None);
    for (policy, code) in [(OnError::Accept, 451), (OnError::Tempfail, 451), (OnError::Reject, 554)] {
        match policy.verdict("s", true) {
            Some(Verdict::Tempfail(reply) | Verdict::Reject(reply)) => assert_eq!(reply.code, code, "{policy:?}"),
            other => panic!("{policy:?} after an edit gave {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_header_section_beyond_what_the_splitter_holds_is_refused_and_never_passed_on() {
    let line = format!("X-Pad: {}\r\n", "p".repeat(1000));
    let outcome = run(vec![pass("first")], |run| {
        for _ in 0..=crate::chain::headers::HEADER_LIMIT / line.len() {
            run.push(line.as_bytes().to_vec());
        }
        assert!(matches!(run.head, Head::Refused(_)));
        assert!(run.decision.get().is_none(), "no stage decided: the host refused");
    })
    .await;
    match outcome {
        ContentOutcome::Decided { verdict: Verdict::Reject(reply), .. } => assert_eq!(reply.code, 552),
        _ => panic!("expected 552"),
    }
}
