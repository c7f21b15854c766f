//! Transparent interception: the nat rules that send a pod's outbound TCP
//! to the sidecar's transparent listener and, when asked, its inbound TCP
//! to the sidecar's inbound transparent listener (REDIRECT keeps the
//! original destination for SO_ORIGINAL_DST). Run once in the pod's network
//! namespace before the app starts (`meshfed-sidecar init-iptables`, as an
//! init container with NET_ADMIN). Outbound, the sidecar's own connections
//! pass by its uid or by the mark it sets, and loopback always passes;
//! inbound, the sidecar's own ports and the skipped ones pass. Applying
//! twice gives the same rules.

use std::process::Command;

/// The chain the outbound rules live in (jumped to from nat OUTPUT).
pub const CHAIN: &str = "MESHFED_OUTPUT";
/// The chain the inbound rules live in (jumped to from nat PREROUTING).
pub const INBOUND_CHAIN: &str = "MESHFED_INBOUND";
/// The source address of the sidecar's connections to its app behind the
/// inbound transparent listener (as Istio's 127.0.0.6): the outbound rules
/// tell them from the sidecar calling its own pod, which goes inbound.
pub(crate) const FORWARD_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 6);

/// What to intercept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The sidecar's transparent listener port.
    pub proxy_port: u16,
    /// The uid the sidecar runs as: its connections are not intercepted.
    pub proxy_uid: Option<u32>,
    /// The SO_MARK the sidecar puts on its connections (`--mark`).
    pub proxy_mark: Option<u32>,
    /// Destinations never intercepted (CIDRs, e.g. the API server).
    pub exclude_cidrs: Vec<String>,
    /// Destination ports never intercepted.
    pub exclude_ports: Vec<u16>,
    /// The sidecar's inbound transparent listener port: with it, inbound
    /// TCP is redirected there too; without, inbound is left alone
    /// (explicit inbound ports).
    pub inbound_port: Option<u16>,
    /// The sidecar's admin port: never intercepted inbound (probes, scrapes).
    pub admin_port: u16,
    /// Inbound destination ports never intercepted (besides the sidecar's own).
    pub skip_inbound_ports: Vec<u16>,
}

/// Why the rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The rules would intercept the sidecar's own connections.
    #[error("give --proxy-uid or --proxy-mark, or the sidecar's own connections loop back to it")]
    NoExemption,
    /// An excluded destination is not a CIDR.
    #[error("{0:?} is not an IPv4 CIDR")]
    Cidr(String),
    /// Two of the sidecar's ports are the same, or one is 0.
    #[error("{0}")]
    Ports(String),
    /// iptables could not be run.
    #[error("running iptables: {0} (is it installed, and are we root with NET_ADMIN?)")]
    Spawn(std::io::Error),
    /// iptables refused a rule.
    #[error("iptables {args}: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
}

impl Rules {
    pub(crate) fn check(&self) -> Result<(), IptablesError> {
        if self.proxy_uid.is_none() && self.proxy_mark.is_none() {
            return Err(IptablesError::NoExemption);
        }
        for c in &self.exclude_cidrs {
            let (ip, len) = c.split_once('/').unwrap_or((c, "32"));
            let ok = ip.parse::<std::net::Ipv4Addr>().is_ok()
                && len.parse::<u8>().is_ok_and(|l| l <= 32);
            if !ok {
                return Err(IptablesError::Cidr(c.clone()));
            }
        }
        if self.proxy_port == 0 {
            return Err(IptablesError::Ports("--proxy-port 0".into()));
        }
        if let Some(inbound) = self.inbound_port {
            if inbound == 0 {
                return Err(IptablesError::Ports("--inbound-proxy-port 0".into()));
            }
            // Redirecting to a listener that expects the other direction
            // (or to the admin port) would break both.
            for (flag, port) in [
                ("--proxy-port", self.proxy_port),
                ("--admin-port", self.admin_port),
            ] {
                if port == inbound {
                    return Err(IptablesError::Ports(format!(
                        "--inbound-proxy-port {inbound} is also the {flag}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The rules of the inbound chain, in order; none without `inbound_port`.
    pub fn inbound_rules(&self) -> Vec<Vec<String>> {
        let Some(inbound) = self.inbound_port else {
            return Vec::new();
        };
        // The sidecar's own ports first, then the user's; each once.
        let mut seen = std::collections::BTreeSet::new();
        let skipped = [inbound, self.proxy_port, self.admin_port]
            .into_iter()
            .chain(self.skip_inbound_ports.iter().copied())
            .filter(|p| seen.insert(*p));
        let mut out: Vec<Vec<String>> = skipped.map(|p| pass_port(INBOUND_CHAIN, p)).collect();
        out.push(redirect(INBOUND_CHAIN, inbound));
        out
    }

    /// The rules of the chain, in order (each an `iptables -t nat` argument list).
    pub fn chain_rules(&self) -> Vec<Vec<String>> {
        let rule = |more: &[&str]| chain_rule(CHAIN, more);
        // What tells the sidecar's own connections: its uid, its mark.
        let uid = self.proxy_uid.map(|u| u.to_string());
        let mark = self.proxy_mark.map(|m| m.to_string());
        let own: Vec<[&str; 4]> = [
            uid.as_deref().map(|u| ["-m", "owner", "--uid-owner", u]),
            mark.as_deref().map(|m| ["-m", "mark", "--mark", m]),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut out = Vec::new();
        if let Some(inbound) = self.inbound_port {
            let inbound = inbound.to_string();
            let source = format!("{FORWARD_SOURCE}/32");
            // The sidecar's forwards to the app (from FORWARD_SOURCE) pass.
            out.push(rule(&["-s", &source, "-o", "lo", "-j", "RETURN"]));
            // The sidecar calling its own pod (the pod is an endpoint of
            // the service it calls) goes to the inbound listener, as a call
            // from another pod would: nat PREROUTING never sees it.
            for m in &own {
                let mut r = vec!["-p", "tcp", "-o", "lo", "!", "-d", "127.0.0.0/8"];
                r.extend(m);
                r.extend(["-j", "REDIRECT", "--to-ports", &inbound]);
                out.push(rule(&r));
            }
        }
        out.push(rule(&["-d", "127.0.0.0/8", "-j", "RETURN"]));
        for m in &own {
            let mut r = m.to_vec();
            r.extend(["-j", "RETURN"]);
            out.push(rule(&r));
        }
        for c in &self.exclude_cidrs {
            out.push(rule(&["-d", c, "-j", "RETURN"]));
        }
        for p in &self.exclude_ports {
            out.push(pass_port(CHAIN, *p));
        }
        out.push(redirect(CHAIN, self.proxy_port));
        out
    }

    /// Installs the rules (replacing an earlier set: without
    /// `inbound_port`, earlier inbound rules are removed).
    pub fn apply(&self) -> Result<(), IptablesError> {
        self.check()?;
        install(CHAIN, "OUTPUT", &self.chain_rules())?;
        if self.inbound_port.is_some() {
            install(INBOUND_CHAIN, "PREROUTING", &self.inbound_rules())?;
        } else {
            uninstall(INBOUND_CHAIN, "PREROUTING");
        }
        Ok(())
    }

    /// Removes the rules, both ways (nothing to remove is fine).
    pub fn remove() -> Result<(), IptablesError> {
        uninstall(CHAIN, "OUTPUT");
        uninstall(INBOUND_CHAIN, "PREROUTING");
        Ok(())
    }
}

/// `-A chain more...`.
fn chain_rule(chain: &str, more: &[&str]) -> Vec<String> {
    ["-A", chain]
        .iter()
        .chain(more)
        .map(|s| (*s).to_owned())
        .collect()
}

/// TCP to port `port` passes `chain`.
fn pass_port(chain: &str, port: u16) -> Vec<String> {
    chain_rule(
        chain,
        &["-p", "tcp", "--dport", &port.to_string(), "-j", "RETURN"],
    )
}

/// All other TCP through `chain` goes to `port` here.
fn redirect(chain: &str, port: u16) -> Vec<String> {
    chain_rule(
        chain,
        &[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &port.to_string(),
        ],
    )
}

/// Fills `chain` with `rules` (a fresh chain, or the old one emptied) and
/// makes sure `hook` jumps to it once.
fn install(chain: &str, hook: &str, rules: &[Vec<String>]) -> Result<(), IptablesError> {
    if iptables(&["-N", chain]).is_err() {
        iptables(&["-F", chain])?;
    }
    for r in rules {
        let args: Vec<&str> = r.iter().map(String::as_str).collect();
        iptables(&args)?;
    }
    let jump = [hook, "-p", "tcp", "-j", chain];
    let mut check = vec!["-C"];
    check.extend(jump);
    if iptables(&check).is_err() {
        let mut add = vec!["-A"];
        add.extend(jump);
        iptables(&add)?;
    }
    Ok(())
}

/// Removes `hook`'s jumps to `chain`, and the chain.
fn uninstall(chain: &str, hook: &str) {
    while iptables(&["-D", hook, "-p", "tcp", "-j", chain]).is_ok() {}
    let _ = iptables(&["-F", chain]);
    let _ = iptables(&["-X", chain]);
}

fn iptables(args: &[&str]) -> Result<(), IptablesError> {
    let out = Command::new("iptables")
        .args(["-w", "-t", "nat"])
        .args(args)
        .output()
        .map_err(IptablesError::Spawn)?;
    if out.status.success() {
        return Ok(());
    }
    Err(IptablesError::Failed {
        args: args.join(" "),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sidecar_and_loopback_pass_everything_else_is_redirected() {
        let r = Rules {
            proxy_port: 15001,
            proxy_uid: Some(2102),
            proxy_mark: None,
            exclude_cidrs: vec!["10.0.0.1/32".into()],
            exclude_ports: vec![22],
            inbound_port: None,
            admin_port: 15020,
            skip_inbound_ports: vec![],
        };
        assert!(
            r.inbound_rules().is_empty(),
            "no inbound rules unless asked"
        );
        let text: Vec<String> = r.chain_rules().iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            text,
            vec![
                "-A MESHFED_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-A MESHFED_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-A MESHFED_OUTPUT -d 10.0.0.1/32 -j RETURN",
                "-A MESHFED_OUTPUT -p tcp --dport 22 -j RETURN",
                "-A MESHFED_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
    }

    #[test]
    fn inbound_skips_the_sidecars_ports_and_the_skipped_ones_and_redirects_the_rest() {
        let r = Rules {
            proxy_port: 15001,
            proxy_uid: Some(2102),
            proxy_mark: None,
            exclude_cidrs: vec![],
            exclude_ports: vec![],
            inbound_port: Some(15006),
            admin_port: 15020,
            // 15020 again: each port once.
            skip_inbound_ports: vec![22, 15020, 15090],
        };
        let text: Vec<String> = r.inbound_rules().iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            text,
            vec![
                "-A MESHFED_INBOUND -p tcp --dport 15006 -j RETURN",
                "-A MESHFED_INBOUND -p tcp --dport 15001 -j RETURN",
                "-A MESHFED_INBOUND -p tcp --dport 15020 -j RETURN",
                "-A MESHFED_INBOUND -p tcp --dport 22 -j RETURN",
                "-A MESHFED_INBOUND -p tcp --dport 15090 -j RETURN",
                "-A MESHFED_INBOUND -p tcp -j REDIRECT --to-ports 15006",
            ]
        );
        // Outbound, the sidecar's forwards to the app pass, and its calls to
        // its own pod go inbound.
        let text: Vec<String> = r.chain_rules().iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            text,
            vec![
                "-A MESHFED_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
                "-A MESHFED_OUTPUT -p tcp -o lo ! -d 127.0.0.0/8 -m owner --uid-owner 2102 -j REDIRECT --to-ports 15006",
                "-A MESHFED_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-A MESHFED_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-A MESHFED_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
    }

    #[test]
    fn refuses_rules_that_would_loop_or_are_malformed() {
        let mut r = Rules {
            proxy_port: 15001,
            proxy_uid: None,
            proxy_mark: None,
            exclude_cidrs: vec![],
            exclude_ports: vec![],
            inbound_port: None,
            admin_port: 15020,
            skip_inbound_ports: vec![],
        };
        assert!(matches!(r.apply(), Err(IptablesError::NoExemption)));
        r.proxy_mark = Some(7);
        r.exclude_cidrs = vec!["10.0.0.0/33".into()];
        assert!(matches!(r.apply(), Err(IptablesError::Cidr(_))));
        r.exclude_cidrs.clear();
        for (inbound, says) in [
            (15001, "--inbound-proxy-port 15001 is also the --proxy-port"),
            (15020, "--inbound-proxy-port 15020 is also the --admin-port"),
            (0, "--inbound-proxy-port 0"),
        ] {
            r.inbound_port = Some(inbound);
            let err = r.apply().expect_err("refused before iptables runs");
            assert!(matches!(err, IptablesError::Ports(_)), "{err}");
            assert_eq!(err.to_string(), says);
        }
    }
}
