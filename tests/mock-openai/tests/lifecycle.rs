//! Server mechanics: prompt shutdown with stuck connections in flight, port binding and
//! concurrency.

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use mock_openai::client;
use mock_openai::{Fault, MockConfig, MockServer};

fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn stop_is_prompt_with_hang_delay_and_slowloris_in_flight() {
    let s = MockServer::start(MockConfig::default());
    let c = s.issue_family("a");
    s.push_fault(Fault::Hang);
    s.push_fault(Fault::Delay(Duration::from_secs(60)));
    s.push_fault(Fault::Slowloris { byte_interval: Duration::from_secs(10) });
    let addr = s.addr();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let rt = c.refresh_token.clone();
            // Sequential so each request picks up its own fault; read the count before
            // sending so a fast request cannot slip past it.
            let n = s.token_requests();
            let h = thread::spawn(move || {
                let body = client::refresh_body(&rt).to_string().into_bytes();
                client::request(
                    addr,
                    "POST",
                    "/oauth/token",
                    Some(("application/json", &body)),
                    Duration::from_secs(100),
                )
            });
            wait_for(|| s.token_requests() > n);
            h
        })
        .collect();
    let t = Instant::now();
    s.stop();
    assert!(t.elapsed() < Duration::from_secs(3), "stop took {:?}", t.elapsed());
    for h in clients {
        // Each client sees its connection end instead of a complete answer.
        let res = h.join().unwrap();
        assert!(res.is_err(), "{res:?}");
    }
    assert!(client::get(addr, "/").is_err(), "listener is closed");
    s.stop(); // idempotent
}

#[test]
fn drop_stops_the_server() {
    let addr = {
        let s = MockServer::start(MockConfig::default());
        s.set_sticky_fault(Some(Fault::Hang));
        let addr = s.addr();
        thread::spawn(move || client::refresh(addr, "x"));
        wait_for(|| s.token_requests() == 1);
        let t = Instant::now();
        drop(s);
        assert!(t.elapsed() < Duration::from_secs(3));
        addr
    };
    assert!(client::get(addr, "/").is_err());
}

#[test]
fn binds_the_requested_port_and_reports_urls() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = MockServer::start(MockConfig::default().with_port(port));
    assert_eq!(s.port(), port);
    assert_eq!(s.url(), format!("http://127.0.0.1:{port}"));
    assert_eq!(s.token_url(), format!("http://127.0.0.1:{port}/oauth/token"));
    // A second bind on the same port is an error, not a panic, via try_start.
    assert!(MockServer::try_start(MockConfig::default().with_port(port)).is_err());
}

#[test]
fn many_concurrent_clients() {
    let s = MockServer::start(MockConfig::default());
    s.set_latency(Duration::from_millis(100));
    let creds: Vec<_> = (0..50).map(|i| s.issue_family(&format!("acct-{i}"))).collect();
    let addr = s.addr();
    let t = Instant::now();
    let handles: Vec<_> = creds
        .into_iter()
        .map(|c| thread::spawn(move || client::refresh(addr, &c.refresh_token).unwrap().status))
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    // Latency overlaps across connections rather than serialising (which would take 5 s).
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(s.successful_refreshes(), 50);
}
