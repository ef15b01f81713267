//! `codex-authctl login --publish` on a fleet follower: the new login goes to the account's
//! seed key (the human-owned one, base64 of auth.json in field `value`), from where the
//! refresher's next run publishes it as the next rotating version (`fleet`'s `newer_seed`).
//! The write is a check-and-set on the seed version read before the login started, so a
//! human's write in the meantime is refused rather than overwritten silently.

use crate::config::{AccountSettings, FleetRole, FleetSettings, Settings, VaultSettings};
use crate::runner::account::Runtime;
use crate::runner::vault::VaultError;

/// Why `--publish` cannot apply to an account (a usage error), or None when it is a follower.
pub fn not_a_follower(acct: &AccountSettings) -> Option<String> {
    let name = &acct.name;
    match acct.fleet.as_ref().map(|f| f.fleet_role) {
        Some(FleetRole::Follower) => None,
        Some(FleetRole::Refresher) => Some(format!(
            "account {name} is this fleet's refresher here: its login is written to the rotating key by the \
                install itself; --publish is for followers"
        )),
        None => Some(format!("account {name} is not in fleet mode: there is no Vault seed key to publish to")),
    }
}

/// The KV mount the account's keys live in (config validation requires `[vault]` for fleet).
fn mount(settings: &Settings) -> &str {
    settings.vault.as_ref().map_or("secret", |v| v.mount.as_str())
}

/// How to do by hand what failed.
fn by_hand(settings: &Settings, acct: &AccountSettings, key: &str) -> String {
    let mount = mount(settings);
    format!(
        "to publish it by hand, put base64(auth.json) in field `value` of {key}: bao kv put -mount={mount} {key} \
            value=\"$(base64 -w0 {}/auth.json)\"",
        acct.codex_home.display()
    )
}

/// A failed seed-key request as the operator needs to read it: who, which key, the fix.
fn explain(settings: &Settings, acct: &AccountSettings, key: &str, e: &VaultError, cas: Option<u64>) -> String {
    let name = &acct.name;
    let mount = mount(settings);
    let what = match (e, cas) {
        (VaultError::Denied { .. }, Some(_)) => format!(
            "Vault denied writing the seed key {key} of account {name} (HTTP 403): this host's Vault token may \
                not write it; its policy needs the \"create\" and \"update\" capabilities on {mount}/data/{key} \
                (a follower's policy grants only \"read\"; README: Fleet mode, Re-login)"
        ),
        (VaultError::CasMismatch { .. }, Some(base)) => format!(
            "someone else changed the seed key {key} of account {name} while this login ran (it was at version \
                {base}; Vault refused the check-and-set write): it was not overwritten; look at what it holds now \
                (bao kv get -mount={mount} {key}) before replacing it"
        ),
        (e, _) => format!("account {name}: {e}"),
    };
    match cas {
        Some(_) => format!("{what}; the login stays installed on this host; {}", by_hand(settings, acct, key)),
        None => what,
    }
}

fn vault_settings<'a>(settings: &'a Settings, acct: &AccountSettings) -> Result<&'a VaultSettings, String> {
    settings.vault.as_ref().ok_or_else(|| format!("account {}: [vault] is not configured", acct.name))
}

/// The seed key's current version (0: absent), the check-and-set base of [`publish_seed`].
pub fn seed_version(
    settings: &Settings,
    acct: &AccountSettings,
    fleet: &FleetSettings,
    rt: &Runtime<'_>,
) -> Result<u64, String> {
    let key = &fleet.vault_seed_key;
    let vs = vault_settings(settings, acct)?;
    let read = rt.vault.get(vs).and_then(|v| v.read(key, rt.clock.now()));
    read.map(|e| e.map_or(0, |e| e.version)).map_err(|e| explain(settings, acct, key, &e, None))
}

/// Write `auth` (a validated auth.json) to the seed key if it is still at version `cas`
/// (0: still absent); the new version, or what went wrong and how to do it by hand.
pub fn publish_seed(
    settings: &Settings,
    acct: &AccountSettings,
    fleet: &FleetSettings,
    auth: &[u8],
    cas: u64,
    rt: &Runtime<'_>,
) -> Result<u64, String> {
    let key = &fleet.vault_seed_key;
    let vs = vault_settings(settings, acct)?;
    let written = rt.vault.get(vs).and_then(|v| v.write(key, auth, cas, rt.clock.now()));
    match written {
        Ok(version) => {
            tracing::info!(account = %acct.name, "fleet: published the new login to the seed key {key} (version \
                {version}); the refresher's next run makes it the next rotating version");
            Ok(version)
        }
        Err(e) => {
            let why = explain(settings, acct, key, &e, Some(cas));
            tracing::warn!(account = %acct.name, "fleet: {why}");
            Err(why)
        }
    }
}
