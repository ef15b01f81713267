//! The only module allowed to read the wall clock (clippy.toml bans it elsewhere), so
//! every decision takes `now` as an argument and tests can inject any time.

use chrono::{DateTime, Utc};

/// Source of the current time.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned wall-clock read
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that always returns the same instant (tests, dry runs of schedules).
#[derive(Clone, Copy, Debug)]
pub struct FixedClock(pub DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// How a [`WallAlarm`] wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woke {
    /// The wall clock reached the instant.
    Reached,
    /// The wall clock was set (stepped) meanwhile: deadlines must be looked at again.
    ClockSet,
}

/// A wait for a wall-clock instant. tokio's timers count monotonic time, which does not
/// follow a step of the wall clock and (CLOCK_MONOTONIC) does not count a suspend, so a
/// sleep worked out from a wall-clock deadline oversleeps after a step forward or a resume.
/// This is an absolute CLOCK_REALTIME timerfd: it fires when the wall clock gets there,
/// however it gets there, and TFD_TIMER_CANCEL_ON_SET ends the wait when the clock is set,
/// so a step back is looked at at once too. One fd, armed anew for each wait; it wakes
/// once when it fires (a long tokio sleep wakes up to 4 times on its way down the timer
/// wheel, see docs/PERFORMANCE.md).
pub struct WallAlarm(tokio::io::unix::AsyncFd<Timer>);

/// The timerfd as tokio registers it.
struct Timer(nix::sys::timerfd::TimerFd);

impl std::os::fd::AsRawFd for Timer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl WallAlarm {
    /// Needs a tokio runtime with I/O enabled.
    pub fn new() -> std::io::Result<WallAlarm> {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        let fd = TimerFd::new(ClockId::CLOCK_REALTIME, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
        // SAFETY: the TimerFd owns its descriptor, which stays open and the same until the
        // AsyncFd (which owns the TimerFd) is dropped.
        let registered =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(Timer(fd), tokio::io::Interest::READABLE) };
        Ok(WallAlarm(registered?))
    }

    /// Wait until the wall clock reads `t` (at once when it is past) or is set. `since` is
    /// the wall-clock time `t` was worked out from: a step back before the timer was armed
    /// is not reported by the kernel, so it is caught by reading the clock again.
    pub async fn until(&self, t: DateTime<Utc>, since: DateTime<Utc>) -> std::io::Result<Woke> {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        use std::os::fd::AsRawFd;
        // An all-zero time would disarm the timer; anything that early is past anyway.
        let at = if t.timestamp() < 1 {
            TimeSpec::new(1, 0)
        } else {
            TimeSpec::new(t.timestamp(), t.timestamp_subsec_nanos().into())
        };
        let flags = TimerSetTimeFlags::TFD_TIMER_ABSTIME | TimerSetTimeFlags::TFD_TIMER_CANCEL_ON_SET;
        self.0.get_ref().0.set(Expiration::OneShot(at), flags)?;
        if SystemClock.now() < since {
            return Ok(Woke::ClockSet);
        }
        loop {
            let mut ready = self.0.readable().await?;
            let read = ready
                .try_io(|fd| nix::unistd::read(fd.get_ref().as_raw_fd(), &mut [0u8; 8]).map_err(std::io::Error::from));
            match read {
                Ok(Ok(_)) => return Ok(Woke::Reached),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ECANCELED) => return Ok(Woke::ClockSet),
                Ok(Err(e)) => return Err(e),
                // Readiness left from an earlier arming: wait for this one.
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn the_alarm_fires_when_the_wall_clock_gets_there() {
        let alarm = WallAlarm::new().unwrap();
        let ms = chrono::Duration::milliseconds;
        let started = Instant::now();
        let woke = alarm.until(SystemClock.now() + ms(150), SystemClock.now()).await.unwrap();
        let took = started.elapsed();
        assert_eq!(woke, Woke::Reached);
        assert!(took >= Duration::from_millis(140) && took < Duration::from_secs(2), "{took:?}");
        // Armed again: a past instant, and one so early it must not disarm the timer.
        for past in [SystemClock.now() - chrono::Duration::hours(1), DateTime::<Utc>::UNIX_EPOCH] {
            let started = Instant::now();
            assert_eq!(alarm.until(past, SystemClock.now()).await.unwrap(), Woke::Reached);
            assert!(started.elapsed() < Duration::from_millis(100));
        }
        // A wait given up (another select! branch won) leaves the next one unaffected.
        let far = alarm.until(SystemClock.now() + chrono::Duration::hours(1), SystemClock.now());
        assert!(tokio::time::timeout(Duration::from_millis(20), far).await.is_err());
        let soon = alarm.until(SystemClock.now() + ms(50), SystemClock.now());
        assert_eq!(tokio::time::timeout(Duration::from_secs(2), soon).await.unwrap().unwrap(), Woke::Reached);
        // Worked out from a reading later than the clock shows now: it was set back before
        // the timer was armed, which the kernel does not report.
        let later = SystemClock.now() + chrono::Duration::days(30);
        let stepped = alarm.until(later + chrono::Duration::hours(1), later);
        assert_eq!(tokio::time::timeout(Duration::from_millis(100), stepped).await.unwrap().unwrap(), Woke::ClockSet);
    }
}
