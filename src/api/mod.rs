//! The D-Bus contract both ends speak: bus names and paths, and the Account object's
//! properties ⇄ `AccountView`. Shared by the daemon and codex-authctl.

pub mod names;
pub mod view;
