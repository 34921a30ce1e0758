//! Per-program status: every probe is loaded and attached on its own, and says why it is not
//! running when it is not.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeState {
    /// Loaded and attached. The note, if any, says what is degraded.
    Active { note: Option<String> },
    /// This kernel, these privileges or this configuration cannot run it.
    Unsupported(String),
    /// It should have worked and did not.
    Failed(String),
}

impl ProbeState {
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Active { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeStatus {
    /// The eBPF program's name.
    pub name: &'static str,
    /// The fields this probe fills.
    pub provides: &'static str,
    pub state: ProbeState,
}

impl ProbeStatus {
    pub fn is_active(&self) -> bool {
        matches!(self.state, ProbeState::Active { .. })
    }
}

impl fmt::Display for ProbeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            ProbeState::Active { note: None } => write!(f, "{}: active", self.name),
            ProbeState::Active { note: Some(n) } => write!(f, "{}: active ({n})", self.name),
            ProbeState::Unsupported(why) => write!(f, "{}: unsupported: {why}", self.name),
            ProbeState::Failed(why) => write!(f, "{}: failed: {why}", self.name),
        }
    }
}
