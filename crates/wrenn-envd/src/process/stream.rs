//! Process event streams (Start and Connect): the `start` event, output, the `end`
//! event, and keepalives on idle streams.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use tonic::Status;
use wrenn_proto::envd::v1::{
    DataEvent, EndEvent, KeepAlive, ProcessEvent, StartEvent, data_event, process_event,
};

use super::output::{Item, StreamKind, Subscription};
use crate::reaper::ExitInfo;

/// The stream type of Start and Connect.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ProcessEvent, Status>> + Send>>;

/// `start`, then everything `subscription` yields, with a keepalive after every
/// `keepalive` of silence. Dropping the stream drops the subscription.
pub(crate) fn events(
    start: StartEvent,
    subscription: Subscription,
    keepalive: Duration,
) -> EventStream {
    let first = stream::once(async move { Ok(event(process_event::Event::Start(start))) });
    let rest = stream::unfold(subscription, move |mut subscription| async move {
        let next = match tokio::time::timeout(keepalive, subscription.next()).await {
            Ok(Some(Item::Data(kind, bytes))) => process_event::Event::Data(DataEvent {
                output: Some(match kind {
                    StreamKind::Stdout => data_event::Output::Stdout(bytes),
                    StreamKind::Stderr => data_event::Output::Stderr(bytes),
                    StreamKind::Pty => data_event::Output::Pty(bytes),
                }),
            }),
            Ok(Some(Item::End(end))) => process_event::Event::End(end),
            Ok(None) => return None,
            Err(_idle) => process_event::Event::Keepalive(KeepAlive {}),
        };
        Some((Ok(event(next)), subscription))
    });
    Box::pin(first.chain(rest))
}

fn event(event: process_event::Event) -> ProcessEvent {
    ProcessEvent { event: Some(event) }
}

/// The `end` event for a reaped child (or for one whose status was lost).
pub(crate) fn end_event(exit: Option<ExitInfo>) -> EndEvent {
    match exit {
        Some(ExitInfo::Exited(code)) => EndEvent {
            exit_code: code,
            exited: true,
            status: format!("exit status {code}"),
            error: None,
        },
        Some(ExitInfo::Signaled(signal)) => EndEvent {
            exit_code: -1,
            exited: false,
            status: format!("signal: {}", signal_name(signal)),
            error: None,
        },
        None => EndEvent {
            exit_code: -1,
            exited: false,
            status: "unknown".to_owned(),
            error: Some("envd lost the exit status of the process".to_owned()),
        },
    }
}

/// Go-style signal descriptions ("killed", "terminated", ...).
fn signal_name(signal: i32) -> String {
    match signal {
        1 => "hangup".into(),
        2 => "interrupt".into(),
        3 => "quit".into(),
        4 => "illegal instruction".into(),
        6 => "aborted".into(),
        7 => "bus error".into(),
        8 => "floating point exception".into(),
        9 => "killed".into(),
        11 => "segmentation fault".into(),
        13 => "broken pipe".into(),
        14 => "alarm clock".into(),
        15 => "terminated".into(),
        other => format!("signal {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_describe_exits_and_signals() {
        let exited = end_event(Some(ExitInfo::Exited(3)));
        assert_eq!((exited.exit_code, exited.exited), (3, true));
        assert_eq!(exited.status, "exit status 3");
        let killed = end_event(Some(ExitInfo::Signaled(9)));
        assert_eq!((killed.exit_code, killed.exited), (-1, false));
        assert_eq!(killed.status, "signal: killed");
        assert!(end_event(None).error.is_some());
    }
}
