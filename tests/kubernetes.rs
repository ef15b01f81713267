//! Issue 16, the seed document's own shape (a refresher CronJob per account): the Vault
//! side of deploy/kubernetes against a real OpenBao. `vault/setup.sh` must be accepted by
//! the server as written (policy and Kubernetes auth role), and the policy must grant a
//! pod exactly what its account's refresher needs: its rotating key and lease (read,
//! create, update), its seed (read) — and nothing of the other accounts, no seed write, no
//! delete, destroy, metadata or listing.

mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use support::openbao::Bao;

const SETUP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/vault/setup.sh");

/// The HTTP status of one Vault request with `token` (2xx, 403, 404, …).
fn status(bao: &Bao, token: &str, method: &str, path: &str, body: Option<Value>) -> u16 {
    let req = ureq::request(method, &format!("{}/v1/{path}", bao.addr)).set("X-Vault-Token", token);
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(resp) => resp.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn write(cas: u64) -> Option<Value> {
    Some(json!({"data": {"value": "e30="}, "options": {"cas": cas}}))
}

/// Run setup.sh for `account` in `namespace` against this server, as the README says.
fn setup(bao: &Bao, account: &str, namespace: &str) {
    let bin = support::openbao::bao_bin().unwrap();
    let out = Command::new(SETUP)
        .args([account, namespace])
        .env("VAULT", &bin)
        .env("BAO_ADDR", &bao.addr)
        .env("BAO_TOKEN", "root")
        .env("HOME", Path::new(env!("CARGO_TARGET_TMPDIR")))
        .output()
        .unwrap();
    assert!(out.status.success(), "setup.sh {account}: {}", String::from_utf8_lossy(&out.stderr));
}

fn seed_key(account: &str) -> String {
    if account == "default" { "codex-auth-json-b64".into() } else { format!("codex-auth-json-b64-{account}") }
}

#[test]
fn setup_script_policy_grants_each_cronjob_exactly_its_own_account() {
    let Some(bao) = Bao::start("setup_script_policy_grants_each_cronjob_exactly_its_own_account") else { return };
    bao.cli(&["auth", "enable", "kubernetes"]);
    // No API server answers here; the role commands only need the method configured
    // (with a CA of its own: OpenBao is not in a pod, it has no service-account CA).
    let ca_dir = tempfile::tempdir().unwrap();
    let (ca, _, _) = support::openbao::make_tls(ca_dir.path());
    bao.cli(&[
        "write",
        "auth/kubernetes/config",
        "kubernetes_host=https://127.0.0.1:1",
        &format!("kubernetes_ca_cert=@{}", ca.display()),
        "disable_local_ca_jwt=true",
    ]);
    let accounts = ["default", "team", "ci-bot"];
    for a in accounts {
        setup(&bao, a, "codex");
        bao.put(&seed_key(a), b"{}");
    }
    let role: Value =
        serde_json::from_str(&bao.field(&["read", "-format=json", "auth/kubernetes/role/codex-auth-refresher-team"]))
            .unwrap();
    let d = &role["data"];
    assert_eq!(d["bound_service_account_names"], json!(["codex-auth-refresher-team"]), "{role}");
    assert_eq!(d["bound_service_account_namespaces"], json!(["codex"]), "{role}");
    assert_eq!(d["audience"], json!("vault"), "{role}");
    assert_eq!(d["token_policies"], json!(["codex-auth-refresher-team"]), "{role}");

    for a in accounts {
        let token = bao.token(&[&format!("codex-auth-refresher-{a}")]);
        let rot = format!("secret/data/codex-auth-json-b64-rotating-{a}");
        let lease = format!("secret/data/codex-auth-lease-{a}");
        let seed = format!("secret/data/{}", seed_key(a));
        let s = |method: &str, path: &str, body: Option<Value>| status(&bao, &token, method, path, body);
        // What the refresher does: first read (absent, not denied), mirror with cas=0,
        // rotate with CAS, hold the lease, read the seed.
        assert_eq!(s("GET", &rot, None), 404, "{a}: reading its absent rotating key");
        assert_eq!(s("POST", &rot, write(0)), 200, "{a}: creating its rotating key");
        assert_eq!(s("POST", &rot, write(1)), 200, "{a}: rotating it (CAS)");
        assert_eq!(s("GET", &rot, None), 200, "{a}: reading it");
        assert_eq!(s("POST", &lease, write(0)), 200, "{a}: taking its lease");
        assert_eq!(s("POST", &lease, write(1)), 200, "{a}: renewing its lease");
        assert_eq!(s("GET", &lease, None), 200, "{a}: reading its lease");
        assert_eq!(s("GET", &seed, None), 200, "{a}: reading its seed");
        // What it must not do.
        let own_name = format!("codex-auth-json-b64-rotating-{a}");
        let mut refused: Vec<(&str, String, Option<Value>)> = vec![
            ("POST", seed.clone(), write(1)),
            ("DELETE", rot.clone(), None),
            ("DELETE", seed.clone(), None),
            ("GET", format!("secret/metadata/{own_name}"), None),
            ("DELETE", format!("secret/metadata/{own_name}"), None),
            ("POST", format!("secret/destroy/{own_name}"), Some(json!({"versions": [1]}))),
            ("POST", format!("secret/delete/{own_name}"), Some(json!({"versions": [1]}))),
            ("LIST", "secret/metadata".into(), None),
            ("GET", format!("{rot}x"), None),
            ("POST", format!("{rot}x"), write(0)),
            ("GET", "secret/data/codex-auth-json-b64-rotating-".into(), None),
            ("GET", "sys/policies/acl/codex-auth-refresher-default".into(), None),
        ];
        for other in accounts.iter().filter(|o| **o != a) {
            refused.push(("GET", format!("secret/data/{}", seed_key(other)), None));
            refused.push(("GET", format!("secret/data/codex-auth-json-b64-rotating-{other}"), None));
            refused.push(("POST", format!("secret/data/codex-auth-json-b64-rotating-{other}"), write(0)));
            refused.push(("GET", format!("secret/data/codex-auth-lease-{other}"), None));
            refused.push(("POST", format!("secret/data/codex-auth-lease-{other}"), write(0)));
        }
        for (method, path, body) in refused {
            assert_eq!(s(method, &path, body), 403, "{a}: {method} {path} must be denied");
        }
    }
    // Nothing the tokens tried changed another account's keys or any seed.
    for a in accounts {
        assert_eq!(bao.get(&seed_key(a)).map(|(_, v)| v), Some(1), "{a}: seed untouched");
        assert_eq!(bao.get(&format!("codex-auth-json-b64-rotating-{a}")).map(|(_, v)| v), Some(2), "{a}");
    }
}

/// A throwaway service-account signer: an RSA key made with openssl, and tokens shaped
/// like the kubelet's projected service-account tokens (RS256, kid, iss, sub, aud, exp,
/// and the `kubernetes.io` claim with namespace, pod and service account).
struct Signer {
    dir: tempfile::TempDir,
}

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

impl Signer {
    fn new() -> Signer {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir.path()).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key"]);
        openssl(&["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        Signer { dir }
    }

    fn public_pem(&self) -> std::path::PathBuf {
        self.dir.path().join("sa.pub")
    }

    /// A token for `namespace/service_account` in pod `pod`, valid for `ttl` seconds.
    fn token(&self, namespace: &str, service_account: &str, pod: &str, ttl: i64) -> String {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        #[allow(clippy::disallowed_methods)] // the token's iat/exp are checked by OpenBao's real clock
        let now = chrono::Utc::now().timestamp();
        let header = json!({"alg": "RS256", "kid": "k8s-test-signing-key"});
        let claims = json!({
            "aud": ["vault"],
            "exp": now + ttl,
            "iat": now,
            "nbf": now,
            "iss": ISSUER,
            "jti": format!("{pod}-{now}"),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": "5d3e0c8a-1111-4c5e-9a55-0d6b3c1f0001"},
                "pod": {"name": pod, "uid": "5d3e0c8a-2222-4c5e-9a55-0d6b3c1f0002"},
                "serviceaccount": {"name": service_account, "uid": "5d3e0c8a-3333-4c5e-9a55-0d6b3c1f0003"},
            },
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
        });
        let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign", "sa.key", "-binary"])
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(signing_input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        format!("{signing_input}.{}", b64(&out.stdout))
    }
}

/// OpenBao's `jwt` auth method at `auth/<mount>` trusting `signer`, with the role
/// codex-auth-refresher-<account> bound to that service account in `namespace` and to the
/// audience "vault", carrying the account's refresher policy from setup.sh.
fn jwt_role(bao: &Bao, signer: &Signer, mount: &str, account: &str, namespace: &str) {
    let name = format!("codex-auth-refresher-{account}");
    let policy = Command::new(SETUP).args([account, namespace, "--policy"]).output().unwrap();
    assert!(policy.status.success());
    let policy_file = signer.dir.path().join(format!("{name}.hcl"));
    std::fs::write(&policy_file, &policy.stdout).unwrap();
    bao.cli(&["policy", "write", &name, policy_file.to_str().unwrap()]);
    if !bao.field(&["auth", "list", "-format=json"]).contains(&format!("\"{mount}/\"")) {
        bao.cli(&["auth", "enable", &format!("-path={mount}"), "jwt"]);
        bao.cli(&[
            "write",
            &format!("auth/{mount}/config"),
            &format!("jwt_validation_pubkeys=@{}", signer.public_pem().display()),
            &format!("bound_issuer={ISSUER}"),
        ]);
    }
    bao.cli(&[
        "write",
        &format!("auth/{mount}/role/{name}"),
        "role_type=jwt",
        "user_claim=sub",
        "bound_audiences=vault",
        &format!("bound_subject=system:serviceaccount:{namespace}:{name}"),
        &format!("token_policies={name}"),
        "token_ttl=10m",
    ]);
}

const SEED_TEAM: &str = "codex-auth-json-b64-team";
const ROTATING_TEAM: &str = "codex-auth-json-b64-rotating-team";

/// A login whose refresh is due, stored as the account team's seed in Vault.
fn seeded(bao: &Bao, mock: &mock_openai::MockServer) -> mock_openai::Credentials {
    let c = mock.issue_family("acct-team");
    bao.put(SEED_TEAM, support::auth_json(&c, support::OLD).as_bytes());
    c
}

#[test]
fn kubernetes_auth_logs_in_with_the_service_account_token_read_at_each_login() {
    let Some(bao) = Bao::start("kubernetes_auth_logs_in_with_the_service_account_token_read_at_each_login") else {
        return;
    };
    let mock = mock_openai::MockServer::start(mock_openai::MockConfig::default());
    let c = seeded(&bao, &mock);
    let signer = Signer::new();
    // A mount of our own, to show kubernetes_mount is honoured.
    jwt_role(&bao, &signer, "k8s-jwt", "team", "codex");
    let scratch = support::Scratch::new();
    let home = scratch.codex_home("codex", None);
    let token_file = scratch.path().join("sa-token");
    let good = signer.token("codex", "codex-auth-refresher-team", "codex-auth-refresher-team-29100000-x1", 600);
    std::fs::write(&token_file, &good).unwrap();
    let config = scratch.config(&format!(
        "host_id = \"pod-1\"\n\n[vault]\naddress = \"{}\"\nauth = \"kubernetes\"\nkubernetes_mount = \"k8s-jwt\"\n\
         kubernetes_role = \"codex-auth-refresher-team\"\nkubernetes_token_file = \"{}\"\nrequest_timeout = \"5s\"\n\n\
         [accounts.team]\nuser = \"{}\"\ncodex_home = \"{}\"\nfleet_role = \"refresher\"\n",
        bao.addr,
        token_file.display(),
        support::me(),
        home.display()
    ));
    let refresh = |extra: &[&str]| {
        let mut cmd = support::agent(&scratch, &mock);
        cmd.arg("--config").arg(&config).args(["refresh", "--account", "team", "--json"]).args(extra);
        support::run(cmd)
    };
    let mut canaries = support::canary::Canaries::new();
    canaries.add_creds(&c);
    canaries.add_token("service-account token", &good);

    let r = refresh(&[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.one()["outcome"], "refreshed", "{}", r.stdout);
    let (rotated, version) = bao.get(ROTATING_TEAM).expect("rotating key written");
    assert_eq!(version, 2, "mirrored seed (1), then the refreshed credential (2)");
    assert_eq!(rotated, std::fs::read(home.join("auth.json")).unwrap());
    assert_eq!(bao.get(SEED_TEAM).map(|(_, v)| v), Some(1), "the seed is never written");
    let mut outputs = vec![r];

    // The file is read again at the next login: each wrong token is refused (transient:
    // fixing the binding heals the account), the old one is not cached across runs.
    let other = Signer::new();
    let refused = [
        ("another service account", signer.token("codex", "codex-auth-refresher-ci", "p2", 600)),
        ("another namespace", signer.token("other", "codex-auth-refresher-team", "p3", 600)),
        ("an expired token", signer.token("codex", "codex-auth-refresher-team", "p4", -120)),
        ("another cluster's signing key", other.token("codex", "codex-auth-refresher-team", "p5", 600)),
    ];
    for (what, jwt) in &refused {
        canaries.add_token(what, jwt);
        std::fs::write(&token_file, jwt).unwrap();
        let r = refresh(&["--force"]);
        assert_eq!(r.code, 4, "{what}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("Kubernetes login refused"), "{what}: {}", r.stdout);
        assert!(r.stdout.contains("auth/k8s-jwt"), "{what}: the reason names the mount: {}", r.stdout);
        outputs.push(r);
    }
    assert_eq!(bao.get(ROTATING_TEAM).map(|(_, v)| v), Some(2), "refused logins wrote nothing");
    let fresh = signer.token("codex", "codex-auth-refresher-team", "codex-auth-refresher-team-29100001-x2", 600);
    canaries.add_token("service-account token 2", &fresh);
    std::fs::write(&token_file, &fresh).unwrap();
    let r = refresh(&["--force"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.one()["outcome"], "refreshed", "{}", r.stdout);
    assert_eq!(bao.get(ROTATING_TEAM).map(|(_, v)| v), Some(3));
    outputs.push(r);
    assert_eq!(mock.reuse_detections(), 0);
    if let Some(rt) = mock.current_refresh_token("acct-team") {
        canaries.add_token("current refresh token", &rt);
    }
    assert_clean(&canaries, &outputs);
}

// ---- The image (deploy/container/build-image.sh) run with podman like a CronJob pod. ----

const IMAGE: &str = "localhost/codex-auth-refresher:test";
const UID: u32 = 10001;

/// Whether podman can run containers here (root, installed by tests/run-all.sh); prints
/// SKIPPED otherwise.
fn podman_usable(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        support::skipped(test, "needs root (podman with the image's own non-root user)");
        return false;
    }
    if Command::new("podman").arg("--version").output().is_err() {
        support::skipped(test, "podman is not installed (tests/run-all.sh installs podman and buildah)");
        return false;
    }
    true
}

/// The OCI runtime podman runs the image with: its default (crun on Debian) where that can
/// start a container, else runc. crun refuses a host with hybrid cgroups ("cgroups in hybrid
/// mode not supported, drop all controllers from cgroupv2": v1 controllers beside a v2
/// hierarchy that holds one), which runc runs on.
fn runtime() -> &'static [&'static str] {
    static CHOSEN: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    CHOSEN.get_or_init(|| {
        let mut errors = String::new();
        for choice in [&[][..], &["--runtime", "runc"][..]] {
            let out = Command::new("podman")
                .args(choice)
                .args(["run", "--rm", "--network", "host"])
                .args(rlimits())
                .args([image(), "--version"])
                .output()
                .unwrap();
            if out.status.success() {
                return choice;
            }
            errors.push_str(&format!("podman {choice:?}: {}\n", String::from_utf8_lossy(&out.stderr)));
        }
        panic!("podman cannot run the image with crun or runc:\n{errors}");
    })
}

/// podman's default rlimits exceed this machine's hard limits (docs: README "Kubernetes");
/// the kubelet sets none.
fn rlimits() -> [String; 2] {
    let hard = Command::new("sh").args(["-c", "ulimit -Hn"]).output().unwrap();
    let hard_nofile = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    [format!("--ulimit=nofile={hard_nofile}:{hard_nofile}"), "--ulimit=nproc=4096:4096".to_string()]
}

/// The image of this build, made once per test binary (rebuilt only when an input changed).
fn image() -> &'static str {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/container/build-image.sh");
        let codex = support::codex::codex_bin();
        let out = Command::new("bash")
            .arg(script)
            .arg("--agent")
            .arg(support::BIN)
            .arg("--codex")
            .arg(codex)
            .args(["--tag", IMAGE])
            .output()
            .unwrap();
        assert!(out.status.success(), "build-image.sh: {}", String::from_utf8_lossy(&out.stderr));
    });
    IMAGE
}

/// One CronJob pod: its emptyDirs (a root-owned 0777 directory, as the kubelet makes
/// them), the ConfigMap (the shipped config.toml and the account file made as the README
/// says, plus a drop-in pointing at the test's Vault and mock), the projected token.
struct Pod {
    dir: tempfile::TempDir,
    name: String,
}

impl Pod {
    fn new(name: &str, bao: &Bao, mock: &mock_openai::MockServer, jwt: &str) -> Pod {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("caa-pod-").tempdir().unwrap();
        let p = dir.path();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let work = p.join("work");
        std::fs::create_dir(&work).unwrap();
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
        let etc = p.join("etc");
        std::fs::create_dir_all(etc.join("config.d")).unwrap();
        let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
        std::fs::copy(k8s.join("base/config.toml"), etc.join("config.toml")).unwrap();
        let account = std::fs::read_to_string(k8s.join("accounts/default/account.toml")).unwrap();
        std::fs::write(etc.join("config.d/50-account.toml"), account.replace("default", "team")).unwrap();
        std::fs::write(
            etc.join("config.d/90-test.toml"),
            format!(
                "[vault]\naddress = \"{}\"\nrequest_timeout = \"5s\"\n\n\
                 [defaults]\ncodex_base_url = \"{}\"\nrequest_timeout = \"10s\"\n",
                bao.addr,
                mock.url()
            ),
        )
        .unwrap();
        let sa = p.join("sa");
        std::fs::create_dir(&sa).unwrap();
        std::fs::write(sa.join("token"), jwt).unwrap();
        // Like a projected token with fsGroup: root-owned, readable by the pod's group.
        nix::unistd::chown(&sa.join("token"), Some(0.into()), Some(UID.into())).unwrap();
        std::fs::set_permissions(sa.join("token"), std::fs::Permissions::from_mode(0o640)).unwrap();
        Pod { dir, name: name.to_string() }
    }

    /// `podman run` of the image as the CronJob runs it: read-only root, the image's own
    /// non-root user, no capabilities, no new privileges, the volumes above.
    fn command(&self, mock: &mock_openai::MockServer, args: &[&str]) -> Command {
        let p = self.dir.path();
        let mut c = Command::new("podman");
        c.args(runtime())
            .args(["run", "--rm", "--read-only", "--network", "host", "--cap-drop", "ALL"])
            .args(["--security-opt", "no-new-privileges", "--hostname", &self.name])
            .args(rlimits())
            .args(["--tmpfs", "/tmp:rw,mode=1777,size=64m"])
            .arg("-v")
            .arg(format!("{}:/work:rw", p.join("work").display()))
            .arg("-v")
            .arg(format!("{}:/etc/codex-auth-agent:ro", p.join("etc").display()))
            .arg("-v")
            .arg(format!("{}:/var/run/secrets/kubernetes.io/serviceaccount:ro", p.join("sa").display()))
            .arg("-e")
            .arg(format!("CODEX_REFRESH_TOKEN_URL_OVERRIDE={}", mock.token_url()))
            .arg("-e")
            .arg("CODEX_AUTH_AGENT_CONFIG=/etc/codex-auth-agent/config.toml")
            .arg(image())
            .args(args);
        c
    }

    fn run(&self, mock: &mock_openai::MockServer, args: &[&str]) -> support::Run {
        support::run(self.command(mock, args))
    }
}

fn assert_clean(canaries: &support::canary::Canaries, runs: &[support::Run]) {
    canaries.assert_absent(
        runs.iter()
            .flat_map(|r| [("stdout".to_string(), r.stdout.as_bytes()), ("stderr".to_string(), r.stderr.as_bytes())]),
    );
}

/// What a pod test needs: podman, OpenBao with the team account's seed and its jwt role at
/// the path the shipped config uses (kubernetes_mount's default), the mock, the signer.
fn cluster(test: &str) -> Option<(Bao, mock_openai::MockServer, mock_openai::Credentials, Signer)> {
    if !podman_usable(test) {
        return None;
    }
    let bao = Bao::start(test)?;
    let mock = mock_openai::MockServer::start(mock_openai::MockConfig::default());
    let c = seeded(&bao, &mock);
    let signer = Signer::new();
    jwt_role(&bao, &signer, "kubernetes", "team", "codex");
    Some((bao, mock, c, signer))
}

#[test]
fn cronjob_image_refreshes_through_codex_app_server_as_its_own_user_with_the_jwt_login() {
    let Some((bao, mock, c, signer)) =
        cluster("cronjob_image_refreshes_through_codex_app_server_as_its_own_user_with_the_jwt_login")
    else {
        return;
    };
    let seed_before = bao.get(SEED_TEAM).unwrap();
    let pod_name = "codex-auth-refresher-team-29100000-abcde";
    let jwt = signer.token("codex", "codex-auth-refresher-team", pod_name, 600);
    let mut canaries = support::canary::Canaries::new();
    canaries.add_creds(&c);
    canaries.add_token("service-account token", &jwt);
    let pod = Pod::new(pod_name, &bao, &mock, &jwt);

    let check = pod.run(&mock, &["check-config"]);
    assert_eq!(check.code, 0, "the shipped config in the image: {}\n{}", check.stdout, check.stderr);
    let r = pod.run(&mock, &["refresh", "--account", "team", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let line = r.one();
    assert_eq!(line["outcome"], "refreshed", "{}", r.stdout);
    // Our own OAuth path never calls the backend: Codex's verify (account/rateLimits/read) did.
    assert!(mock.backend_requests() > 0, "codex app-server did the refresh");
    assert_eq!(mock.token_requests(), 1, "one token request, by Codex");
    let (rotated, version) = bao.get(ROTATING_TEAM).expect("the rotating key was written");
    assert_eq!(version, 2, "mirrored seed (1), then the refreshed credential (2)");
    let auth: Value = serde_json::from_slice(&rotated).expect("Vault holds an auth.json");
    let rt = auth["tokens"]["refresh_token"].as_str().unwrap().to_string();
    assert!(mock.is_live_refresh_token(&rt), "Vault holds the live refresh token");
    assert_ne!(rt, c.refresh_token, "rotated");
    assert_eq!(bao.get(SEED_TEAM), Some(seed_before), "the seed key is untouched");
    canaries.add_token("rotated refresh token", &rt);
    for t in ["access_token", "id_token"] {
        canaries.add_token(t, auth["tokens"][t].as_str().unwrap());
    }
    // The pod's files belong to the image's user; the credential never left the emptyDir.
    let work = pod.dir.path().join("work");
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(work.join("codex")).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (UID, 0o700), "CODEX_HOME made by the pod's user, 0700");
    assert_eq!(std::fs::read(work.join("codex/auth.json")).unwrap(), rotated);

    // A retry the same day (a new pod, fresh emptyDirs): installs Vault's credential and
    // spends nothing.
    let pod2 = Pod::new("codex-auth-refresher-team-29100000-fghij", &bao, &mock, &jwt);
    let r2 = pod2.run(&mock, &["refresh", "--account", "team", "--json"]);
    assert_eq!(r2.code, 0, "{}\n{}", r2.stdout, r2.stderr);
    assert_eq!(r2.one()["outcome"], "fresh", "{}", r2.stdout);
    assert_eq!(mock.token_requests(), 1, "no second token request");
    assert_eq!(bao.get(ROTATING_TEAM).map(|(_, v)| v), Some(2));
    assert_eq!(mock.reuse_detections(), 0);
    let log = format!("{}{}", r.stdout, r.stderr);
    assert_clean(&canaries, &[check, r, r2]);
    // What `kubectl logs` shows (checked clean above).
    println!("pod log of the refreshing run:\n{log}");
}

/// Three rounds of two pods (as if concurrencyPolicy had failed) and a VM agent refresher
/// of the same account, all forced: the VM started with the pods, or (`vm_last`) in round 0
/// only once both pods ended, so that they race each other for the lease. Returns the
/// outcome lines and how many runs refreshed.
fn race(test: &str, vm_last: bool) -> Option<(Vec<String>, u64)> {
    let (bao, mock, c, signer) = cluster(test)?;
    let mut canaries = support::canary::Canaries::new();
    canaries.add_creds(&c);
    // The VM agent: oauth, a Vault token with the same per-account policy.
    let vm = support::Scratch::new();
    let vm_home = vm.codex_home("codex", None);
    let token_file = vm.path().join("vault-token");
    std::fs::write(&token_file, bao.token(&["codex-auth-refresher-team"])).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let vm_config = vm.config(&format!(
        "host_id = \"vm-1\"\n\n[vault]\naddress = \"{}\"\ntoken_file = \"{}\"\nrequest_timeout = \"5s\"\n\n\
         [accounts.team]\nuser = \"{}\"\ncodex_home = \"{}\"\nfleet_role = \"refresher\"\n",
        bao.addr,
        token_file.display(),
        support::me(),
        vm_home.display()
    ));
    let piped = |mut c: Command| {
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    };
    let (mut runs, mut refreshed) = (Vec::new(), 0u64);
    for round in 0..3 {
        // The first lease holder keeps the lease (15 min): later rounds show the others follow.
        let jwt = signer.token("codex", "codex-auth-refresher-team", &format!("pod-{round}"), 600);
        canaries.add_token("service-account token", &jwt);
        let pods: Vec<Pod> =
            (0..2).map(|i| Pod::new(&format!("codex-auth-refresher-team-{round}-{i}"), &bao, &mock, &jwt)).collect();
        let mut children: Vec<std::process::Child> = pods
            .iter()
            .map(|p| piped(p.command(&mock, &["refresh", "--account", "team", "--json", "--force"])))
            .collect();
        let mut outputs = Vec::new();
        if vm_last && round == 0 {
            outputs.extend(children.drain(..).map(|c| c.wait_with_output().unwrap()));
        }
        let mut vm_cmd = support::agent(&vm, &mock);
        vm_cmd.arg("--config").arg(&vm_config).args(["refresh", "--account", "team", "--json", "--force"]);
        children.push(piped(vm_cmd));
        outputs.extend(children.into_iter().map(|c| c.wait_with_output().unwrap()));
        for out in outputs {
            let r = support::Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            // 4: a run that lost the race for the first mirror or the lease (retried later).
            assert!(r.code == 0 || r.code == 4, "round {round}: {}\n{}", r.stdout, r.stderr);
            if r.code == 0 && r.one()["outcome"] == "refreshed" {
                refreshed += 1;
            }
            runs.push(r);
        }
    }
    assert_eq!(mock.reuse_detections(), 0, "no refresh_token_reused");
    assert_eq!(mock.successful_refreshes(), refreshed, "every spend was reported as refreshed");
    assert!(refreshed >= 1);
    let (rotated, version) = bao.get(ROTATING_TEAM).unwrap();
    assert_eq!(version, 1 + refreshed, "the mirrored seed, then one version per refresh");
    let auth: Value = serde_json::from_slice(&rotated).unwrap();
    let rt = auth["tokens"]["refresh_token"].as_str().unwrap();
    assert!(mock.is_live_refresh_token(rt), "Vault ends with the live refresh token");
    canaries.add_token("last refresh token", rt);
    let outcomes = runs
        .iter()
        .map(|r| r.json().first().map(|l| format!("{} ({})", l["outcome"], l["reason"])).unwrap_or_default())
        .collect();
    assert_clean(&canaries, &runs);
    Some((outcomes, refreshed))
}

#[test]
fn cronjob_pods_and_a_vm_agent_sharing_one_vault_never_spend_the_same_token() {
    let test = "cronjob_pods_and_a_vm_agent_sharing_one_vault_never_spend_the_same_token";
    // All at once (the VM's agent starts in milliseconds, a pod in about a second, so the
    // VM usually wins); then the two pods alone first, racing each other, the VM following.
    for vm_last in [false, true] {
        let Some((outcomes, refreshed)) = race(test, vm_last) else { return };
        println!("VM last: {vm_last}: {refreshed} refreshes in 3 rounds of 3 runs:\n{}", outcomes.join("\n"));
        if vm_last {
            let pod_lease = "lease held by codex-auth-refresher-team-0-";
            assert!(outcomes.iter().any(|o| o.contains(pod_lease)), "a pod took the lease: {outcomes:#?}");
            assert!(!outcomes.iter().any(|o| o.contains("lease held by vm-1")), "{outcomes:#?}");
        }
    }
}
