//! Test hook, compiled only with the cargo feature `fault-injection` (tests/run-all.sh
//! turns it on; the shipped binary has none, and [`point`] is an empty inline function):
//! `CODEX_AUTH_AGENT_FAULT=<step>` makes the process abort (SIGABRT, no core file) when a
//! cycle reaches that step, so the crash-consistency suite (tests/crash.rs) can prove what a
//! kill at each point leaves on disk. The variable is read once; unset or unknown, every
//! [`point`] is a no-op.

/// Where a cycle can be made to crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Our cycle lock is held; nothing read yet.
    AfterLock,
    /// auth.json read and parsed; nothing sent.
    AfterRead,
    /// The token response arrived (the server rotated); nothing written.
    AfterPost,
    /// The temp file is written and fsynced; not renamed over auth.json.
    AfterTempWrite,
    /// auth.json renamed into place; the directory not yet fsynced.
    AfterRename,
    /// A worker sent its report; it has not read its next request (it dies while its
    /// parent keeps it for the next task).
    AfterReport,
}

impl Step {
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    fn parse(s: &str) -> Option<Step> {
        Some(match s {
            "after_lock" => Step::AfterLock,
            "after_read" => Step::AfterRead,
            "after_post" => Step::AfterPost,
            "after_temp_write" => Step::AfterTempWrite,
            "after_rename" => Step::AfterRename,
            "after_report" => Step::AfterReport,
            _ => return None,
        })
    }
}

#[cfg(feature = "fault-injection")]
fn armed() -> Option<Step> {
    static ARMED: std::sync::OnceLock<Option<Step>> = std::sync::OnceLock::new();
    *ARMED.get_or_init(|| std::env::var("CODEX_AUTH_AGENT_FAULT").ok().as_deref().and_then(Step::parse))
}

/// Abort here when the hook is armed for `step`.
#[cfg(feature = "fault-injection")]
pub fn point(step: Step) {
    if armed() == Some(step) {
        crate::sys::process::harden_process(); // no core file from a deliberate crash
        std::process::abort();
    }
}

/// Without the feature a fault point is nothing at all.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_step: Step) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_unknown_is_inert() {
        assert_eq!(Step::parse("after_temp_write"), Some(Step::AfterTempWrite));
        assert_eq!(Step::parse("after_lock"), Some(Step::AfterLock));
        assert_eq!(Step::parse("nonsense"), None);
    }
}
