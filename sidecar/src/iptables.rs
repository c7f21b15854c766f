//! Transparent interception: the nat rules that send a pod's outbound TCP
//! to the sidecar's transparent listener (REDIRECT keeps the original
//! destination for SO_ORIGINAL_DST). Run once in the pod's network
//! namespace before the app starts (`meshfed-sidecar init-iptables`, as an
//! init container with NET_ADMIN). The sidecar's own connections pass by
//! its uid or by the mark it sets; loopback always passes. Applying twice
//! gives the same rules.

use std::process::Command;

/// The chain the rules live in.
pub const CHAIN: &str = "MESHFED_OUTPUT";

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
    fn check(&self) -> Result<(), IptablesError> {
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
        Ok(())
    }

    /// The rules of the chain, in order (each an `iptables -t nat` argument list).
    pub fn chain_rules(&self) -> Vec<Vec<String>> {
        let rule = |more: &[&str]| -> Vec<String> {
            ["-A", CHAIN]
                .iter()
                .chain(more)
                .map(|s| (*s).to_owned())
                .collect()
        };
        let mut out = vec![rule(&["-d", "127.0.0.0/8", "-j", "RETURN"])];
        if let Some(uid) = self.proxy_uid {
            out.push(rule(&[
                "-m",
                "owner",
                "--uid-owner",
                &uid.to_string(),
                "-j",
                "RETURN",
            ]));
        }
        if let Some(mark) = self.proxy_mark {
            out.push(rule(&[
                "-m",
                "mark",
                "--mark",
                &mark.to_string(),
                "-j",
                "RETURN",
            ]));
        }
        for c in &self.exclude_cidrs {
            out.push(rule(&["-d", c, "-j", "RETURN"]));
        }
        for p in &self.exclude_ports {
            out.push(rule(&[
                "-p",
                "tcp",
                "--dport",
                &p.to_string(),
                "-j",
                "RETURN",
            ]));
        }
        out.push(rule(&[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &self.proxy_port.to_string(),
        ]));
        out
    }

    /// Installs the rules (replacing an earlier set).
    pub fn apply(&self) -> Result<(), IptablesError> {
        self.check()?;
        // A fresh chain, or the old one emptied.
        if iptables(&["-N", CHAIN]).is_err() {
            iptables(&["-F", CHAIN])?;
        }
        for r in self.chain_rules() {
            let args: Vec<&str> = r.iter().map(String::as_str).collect();
            iptables(&args)?;
        }
        let jump = ["OUTPUT", "-p", "tcp", "-j", CHAIN];
        let mut check = vec!["-C"];
        check.extend(jump);
        if iptables(&check).is_err() {
            let mut add = vec!["-A"];
            add.extend(jump);
            iptables(&add)?;
        }
        Ok(())
    }

    /// Removes the rules (nothing to remove is fine).
    pub fn remove() -> Result<(), IptablesError> {
        while iptables(&["-D", "OUTPUT", "-p", "tcp", "-j", CHAIN]).is_ok() {}
        let _ = iptables(&["-F", CHAIN]);
        let _ = iptables(&["-X", CHAIN]);
        Ok(())
    }
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
            proxy_port: 4140,
            proxy_uid: Some(2102),
            proxy_mark: None,
            exclude_cidrs: vec!["10.0.0.1/32".into()],
            exclude_ports: vec![22],
        };
        let text: Vec<String> = r.chain_rules().iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            text,
            vec![
                "-A MESHFED_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-A MESHFED_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-A MESHFED_OUTPUT -d 10.0.0.1/32 -j RETURN",
                "-A MESHFED_OUTPUT -p tcp --dport 22 -j RETURN",
                "-A MESHFED_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
            ]
        );
    }

    #[test]
    fn refuses_rules_that_would_loop_or_are_malformed() {
        let mut r = Rules {
            proxy_port: 4140,
            proxy_uid: None,
            proxy_mark: None,
            exclude_cidrs: vec![],
            exclude_ports: vec![],
        };
        assert!(matches!(r.apply(), Err(IptablesError::NoExemption)));
        r.proxy_mark = Some(7);
        r.exclude_cidrs = vec!["10.0.0.0/33".into()];
        assert!(matches!(r.apply(), Err(IptablesError::Cidr(_))));
    }
}
