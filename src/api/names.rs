//! D-Bus names and object paths from the contract, shared by the daemon and codex-authctl.

pub const BUS_NAME: &str = "org.codexauth.Agent1";
pub const MANAGER_PATH: &str = "/org/codexauth/Agent1";
pub const MANAGER_IFACE: &str = "org.codexauth.Agent1.Manager";
pub const ACCOUNT_IFACE: &str = "org.codexauth.Agent1.Account";
/// Members of this group may call Refresh/Preflight; Store/Login/Seed/SeedVersion/PublishSeed need root.
pub const OPERATOR_GROUP: &str = "codex-auth";

/// The object path of an account, escaped as `sd_bus_path_encode` does: every byte that
/// is not `[A-Za-z0-9]` becomes `_` and two lower-case hex digits.
pub fn account_path(name: &str) -> String {
    let mut out = format!("{MANAGER_PATH}/account/");
    if name.is_empty() {
        out.push('_');
    }
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// Which bus to use: `system`, `session`, or a D-Bus address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusChoice {
    System,
    Session,
    Address(String),
}

impl std::str::FromStr for BusChoice {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "system" => BusChoice::System,
            "session" | "user" => BusChoice::Session,
            other => BusChoice::Address(other.to_string()),
        })
    }
}

impl BusChoice {
    pub fn builder(&self) -> zbus::Result<zbus::connection::Builder<'static>> {
        match self {
            BusChoice::System => zbus::connection::Builder::system(),
            BusChoice::Session => zbus::connection::Builder::session(),
            BusChoice::Address(a) => zbus::connection::Builder::address(a.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_escaped_like_sd_bus() {
        assert_eq!(account_path("alice"), "/org/codexauth/Agent1/account/alice");
        assert_eq!(account_path("team-1"), "/org/codexauth/Agent1/account/team_2d1");
        assert_eq!(account_path(""), "/org/codexauth/Agent1/account/_");
    }
}
