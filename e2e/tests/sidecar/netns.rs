//! Network namespaces for the tests that need real networking rules (root,
//! `ip`, `iptables`; CI has them). A test that cannot run here says so
//! loudly and returns.

use std::future::Future;
use std::process::Command;

/// A network namespace a test made (loopback up), deleted when dropped.
pub struct Netns(pub String);

impl Netns {
    /// `tag` tells apart the namespaces of tests running at once.
    pub fn create(tag: &str) -> Self {
        let name = format!("meshfed-sc-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Self(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        sh(&self.command(args))
    }

    /// Runs `args` in the namespace, whatever its exit status.
    pub fn try_exec(&self, args: &[&str]) -> std::process::Output {
        let all = self.command(args);
        Command::new(all[0])
            .args(&all[1..])
            .output()
            .unwrap_or_else(|e| panic!("{all:?}: {e}"))
    }

    fn command<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["ip", "netns", "exec", &self.0];
        all.extend(args);
        all
    }

    /// Runs `meshfed-sidecar init-iptables ARGS` here — the command's own
    /// code, in this process, on a thread inside the namespace (the
    /// `iptables` it runs inherit that) — and lists `chain` as installed.
    pub fn init_iptables(&self, args: &[&str], chain: &str) -> String {
        let argv: Vec<String> = ["meshfed-sidecar", "init-iptables"]
            .iter()
            .chain(args)
            .map(|a| a.to_string())
            .collect();
        self.on_thread(move || meshfed_sidecar::binary_main(argv))
            .join()
            .expect("init-iptables thread")
            .unwrap_or_else(|e| panic!("init-iptables {args:?}: {e:#}"));
        let listed = self.exec(&["iptables", "-t", "nat", "-S", chain]);
        String::from_utf8_lossy(&listed.stdout).into_owned()
    }

    /// Joins this namespace to `peer` by a veth pair, `mine` here and
    /// `theirs` there (addresses in one /24), both up.
    pub fn veth(&self, peer: &Netns, mine: &str, theirs: &str) {
        self.exec(&[
            "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", &peer.0,
        ]);
        for (ns, dev, addr) in [(self, "veth0", mine), (peer, "veth1", theirs)] {
            ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ns.exec(&["ip", "link", "set", dev, "up"]);
        }
    }

    /// Runs `work` on a runtime of its own, on a thread inside the namespace.
    pub fn run<F, Fut>(&self, work: F) -> std::thread::JoinHandle<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        self.on_thread(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(work());
        })
    }

    /// Runs `work` on a thread inside the namespace (namespaces are a
    /// thread's: the rest of the test stays outside).
    fn on_thread<F, T>(&self, work: F) -> std::thread::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&fd),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("enter netns");
            work()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

pub fn sh(args: &[&str]) -> std::process::Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether this machine can run test `name`, which needs root and `tools`;
/// when it cannot, a banner says so and why.
pub fn can_run(name: &str, tools: &[&str]) -> bool {
    let why = if rustix::process::geteuid().is_root() {
        tools
            .iter()
            .find(|tool| {
                !Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .map(|tool| format!("`{tool}` is not installed"))
    } else {
        Some("not root".into())
    };
    let Some(why) = why else {
        return true;
    };
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPED {name}\n\
         !!! {why}: this network-namespace test needs root, {}\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
        tools.join(", ")
    );
    false
}
