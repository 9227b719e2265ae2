//! The kernel matrix: Debian kernels fetched from the package mirror and booted in qemu, with the host's tree
//! shared into the guest read-only and a command run there as root.
//!
//! A kernel comes from `linux-image-<version>-amd64-unsigned` (or `-cloud-amd64-unsigned`): `apt-get
//! download`, `dpkg-deb -x`, `depmod -b`, all cached under `target/kernels/`. The guest boots a busybox
//! initramfs (`xtask/vm/init`) that mounts the host's `/` over 9p, or over virtiofs where the kernel has no 9p
//! (the cloud flavour), and runs the command. qemu uses KVM where `/dev/kvm` boots the kernel, else software
//! emulation (a paravirtual `/dev/kvm` boots only kernels built for it).
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, capture, run};

/// PID 1 of the guest.
const INIT: &str = include_str!("../vm/init");
/// virtiofsd as Debian's qemu-system-common installs it.
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
/// Guest memory, in MiB.
const GUEST_MIB: u32 = 4096;
/// How long a boot to a trivial command may take before KVM is taken not to work for a kernel.
const KVM_PROBE: Duration = Duration::from_secs(20);

/// A kernel flavour of Debian's packages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// `-amd64`: the generic kernel.
    Generic,
    /// `-cloud-amd64`: the cloud images' kernel (no 9p).
    Cloud,
}

/// A kernel series and flavour as `--kernel` names it: `6.1`, `6.1-cloud`, `6.12`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// `6.1`, `6.12`.
    pub series: String,
    /// Generic or cloud.
    pub flavour: Flavour,
}

impl FromStr for Spec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (series, flavour) = match s.strip_suffix("-cloud") {
            Some(series) => (series, Flavour::Cloud),
            None => (s, Flavour::Generic),
        };
        let mut parts = series.split('.');
        let valid = parts.next().is_some_and(|p| p.parse::<u32>().is_ok())
            && parts.next().is_some_and(|p| p.parse::<u32>().is_ok())
            && parts.next().is_none();
        if !valid {
            bail!("--kernel takes a series such as 6.1, 6.12 or 6.1-cloud (or `running`), not {s:?}");
        }
        Ok(Spec {
            series: series.to_owned(),
            flavour,
        })
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.flavour {
            Flavour::Generic => write!(f, "{}", self.series),
            Flavour::Cloud => write!(f, "{}-cloud", self.series),
        }
    }
}

impl Spec {
    /// Whether `package` is an unsigned kernel image of this series and flavour.
    fn matches(&self, package: &str) -> bool {
        let suffix = match self.flavour {
            Flavour::Generic => "-amd64-unsigned",
            Flavour::Cloud => "-cloud-amd64-unsigned",
        };
        let Some(version) = package
            .strip_prefix("linux-image-")
            .and_then(|p| p.strip_suffix(suffix))
        else {
            return false;
        };
        // 6.1.0-57 or 6.12.118+deb12; not -rt-, and a generic name is not a cloud or rt one.
        version
            .strip_prefix(&self.series)
            .is_some_and(|rest| rest.starts_with('.') && !rest.contains("-rt") && !rest.contains("-cloud"))
    }

    /// The newest matching package among `apt-cache search` output lines.
    fn newest(&self, search: &str) -> Option<String> {
        search
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|p| self.matches(p))
            .max_by_key(|p| version_key(p))
            .map(str::to_owned)
    }
}

/// The numbers in a package name, for ordering versions (6.12.9 < 6.12.118).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// How the guest reaches the host's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Share {
    NineP,
    VirtioFs,
}

impl Share {
    fn name(self) -> &'static str {
        match self {
            Share::NineP => "9p",
            Share::VirtioFs => "virtiofs",
        }
    }

    /// The modules the initramfs loads to mount the shares.
    fn modules(self) -> &'static [&'static str] {
        match self {
            Share::NineP => &["virtio_pci", "9pnet_virtio", "9p"],
            Share::VirtioFs => &["virtio_pci", "virtiofs"],
        }
    }
}

/// A kernel unpacked and ready to boot.
pub struct Kernel {
    /// The package it came from.
    pub package: String,
    /// Its `uname -r`.
    pub release: String,
    dir: PathBuf,
    share: Share,
}

impl Kernel {
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn modules(&self) -> PathBuf {
        self.root().join("lib/modules").join(&self.release)
    }

    fn vmlinuz(&self) -> PathBuf {
        self.root().join("boot").join(format!("vmlinuz-{}", self.release))
    }

    /// The initramfs, named after the init it holds, so that a changed init builds a new one.
    fn initrd(&self) -> PathBuf {
        let fnv = INIT.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        self.dir.join(format!("initrd-{fnv:016x}.cpio.gz"))
    }
}

/// Finds the newest kernel of `spec` on the mirror and unpacks it under `cache` (once).
pub fn fetch(spec: &Spec, cache: &Path) -> Result<Kernel> {
    let search = capture(Command::new("apt-cache").args([
        "search",
        "--names-only",
        &format!("^linux-image-{}\\.", spec.series.replace('.', "\\.")),
    ]))?;
    let Some(package) = spec.newest(&search) else {
        bail!("the package mirror offers no linux-image-{spec}*-unsigned package (run `apt-get update`?)");
    };
    let dir = cache.join(&package);
    let root = dir.join("root");
    if !root.join("lib/modules").is_dir() {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        eprintln!("kernel {spec}: fetching {package}");
        run(Command::new("apt-get").args(["download", &package]).current_dir(&dir))?;
        let deb = fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))?;
        let unpacking = dir.join("root.partial");
        let _ = fs::remove_dir_all(&unpacking);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacking))?;
        fs::rename(&unpacking, &root)?;
        fs::remove_file(&deb)?;
    }
    let release = fs::read_dir(root.join("lib/modules"))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .next()
        .with_context(|| format!("{package} has no lib/modules/<release>"))?;
    let config = fs::read_to_string(root.join("boot").join(format!("config-{release}")))
        .with_context(|| format!("{package} has no boot/config-{release}"))?;
    let built = |option: &str| {
        config
            .lines()
            .any(|l| l == format!("{option}=m") || l == format!("{option}=y"))
    };
    let share = if built("CONFIG_NET_9P_VIRTIO") && built("CONFIG_9P_FS") {
        Share::NineP
    } else if built("CONFIG_VIRTIO_FS") {
        Share::VirtioFs
    } else {
        bail!("{package} has neither 9p nor virtiofs: the guest could not see the host's files");
    };
    let kernel = Kernel {
        package,
        release,
        dir,
        share,
    };
    if !kernel.modules().join("modules.dep").is_file() {
        run(Command::new("depmod").arg("-b").arg(kernel.root()).arg(&kernel.release))?;
    }
    if !kernel.initrd().is_file() {
        initramfs(&kernel)?;
    }
    Ok(kernel)
}

/// Builds the busybox initramfs with the modules that mount the shares.
fn initramfs(kernel: &Kernel) -> Result<()> {
    let busybox = cmd::which("busybox", &["/usr/bin", "/bin"]).context("busybox not found (package busybox-static)")?;
    let tree = kernel.dir.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for d in ["bin", "dev", "proc", "sys", "newroot", "mods"] {
        fs::create_dir_all(tree.join(d))?;
    }
    fs::copy(&busybox, tree.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", tree.join("bin/sh"))?;
    let mut order = Vec::new();
    for module in kernel.share.modules() {
        let deps = capture(Command::new("modprobe").arg("-d").arg(kernel.root()).args([
            "-S",
            &kernel.release,
            "--show-depends",
            module,
        ]))?;
        for ko in deps.lines().filter_map(|l| l.strip_prefix("insmod ")).map(str::trim) {
            let file = Path::new(ko).file_name().and_then(|f| f.to_str()).unwrap_or_default();
            let name = file.split(".ko").next().unwrap_or(file).to_owned() + ".ko";
            if order.contains(&name) {
                continue;
            }
            let out = tree.join("mods").join(&name);
            match Path::new(file).extension().and_then(|e| e.to_str()) {
                Some("xz") => decompress("xz", ko, &out)?,
                Some("zst") => decompress("zstd", ko, &out)?,
                Some("gz") => decompress("gzip", ko, &out)?,
                _ => {
                    fs::copy(ko, &out)?;
                }
            }
            order.push(name);
        }
    }
    fs::write(tree.join("mods/order"), order.join("\n") + "\n")?;
    fs::write(tree.join("init"), INIT)?;
    fs::set_permissions(tree.join("init"), fs::Permissions::from_mode(0o755))?;
    let partial = kernel.dir.join("initrd.partial");
    archive(&tree, &partial)?;
    fs::rename(&partial, kernel.initrd())?;
    fs::remove_dir_all(&tree)?;
    Ok(())
}

/// `find . | cpio -o -H newc | gzip -1 > out` in `tree`, piped here (no shell).
fn archive(tree: &Path, out: &Path) -> Result<()> {
    let file = fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let spawn = |command: &mut Command, name: &str| command.spawn().with_context(|| format!("cannot start {name}"));
    let mut find = spawn(
        Command::new("find").arg(".").current_dir(tree).stdout(Stdio::piped()),
        "find",
    )?;
    let listing = find.stdout.take().context("find's stdout")?;
    let mut cpio = spawn(
        Command::new("cpio")
            .args(["-o", "-H", "newc", "--quiet"])
            .current_dir(tree)
            .stdin(listing)
            .stdout(Stdio::piped()),
        "cpio",
    )?;
    let stream = cpio.stdout.take().context("cpio's stdout")?;
    let gzip = spawn(Command::new("gzip").arg("-1").stdin(stream).stdout(file), "gzip")?;
    for (name, mut child) in [("find", find), ("cpio", cpio), ("gzip", gzip)] {
        let status = child.wait().with_context(|| format!("waiting for {name}"))?;
        if !status.success() {
            bail!("{name} failed building the initramfs in {}: {status}", tree.display());
        }
    }
    Ok(())
}

fn decompress(tool: &str, from: &str, to: &Path) -> Result<()> {
    let out = Command::new(tool)
        .args(["-dc", from])
        .output()
        .with_context(|| format!("cannot start {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {from} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    fs::write(to, out.stdout)?;
    Ok(())
}

/// A finished guest run.
pub struct Outcome {
    /// The command's exit status.
    pub status: i32,
    /// Which accelerator ran it.
    pub accel: &'static str,
}

/// Boots `kernel`, runs `script` (sh) as root in `work` (a writable directory shared at its host path) with the
/// host's `/` read-only and `trees` read-only at their own paths too (the guest's /tmp is its own: a tree under
/// the host's /tmp would be hidden), and returns the script's exit status. The guest's output goes to this
/// stdout.
pub fn boot(kernel: &Kernel, trees: &[&Path], work: &Path, script: &str, timeout: Duration) -> Result<Outcome> {
    fs::create_dir_all(work)?;
    let shares = Shares::new(kernel, trees, work)?;
    let accel = accelerator(kernel, &shares)?;
    let status = boot_with(kernel, &shares, script, timeout, accel, true)?.with_context(|| {
        format!(
            "the {} guest ended without an exit status (it crashed, or ran past {} s)",
            kernel.release,
            timeout.as_secs()
        )
    })?;
    Ok(Outcome { status, accel })
}

/// What the guest mounts: (tag, host directory, read-only), in mount order; the work directory last.
struct Shares(Vec<(String, PathBuf, bool)>);

impl Shares {
    fn new(kernel: &Kernel, trees: &[&Path], work: &Path) -> Result<Self> {
        let mut shares = vec![
            ("hostroot".to_owned(), PathBuf::from("/"), true),
            ("mods".to_owned(), kernel.modules(), true),
        ];
        for (i, tree) in trees.iter().enumerate() {
            shares.push((format!("tree{i}"), tree.canonicalize()?, true));
        }
        shares.push(("work".to_owned(), work.canonicalize()?, false));
        for (_, dir, _) in &shares {
            let text = dir.to_str().context("a shared path is not UTF-8")?;
            if text.contains([',', ' ', ':']) {
                bail!("{text}: the kernel matrix cannot share a path with a comma, space or colon");
            }
        }
        Ok(Shares(shares))
    }

    fn work(&self) -> &Path {
        &self.0.last().expect("the work share").1
    }

    /// The `vmmounts=` the guest's init mounts after the host's `/` and the modules.
    fn mounts(&self) -> String {
        self.0[2..]
            .iter()
            .map(|(tag, dir, ro)| format!("{tag}:{}:{}", if *ro { "ro" } else { "rw" }, dir.display()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `kvm` when the kernel boots under KVM here (probed once per kernel), else `tcg`.
fn accelerator(kernel: &Kernel, shares: &Shares) -> Result<&'static str> {
    let cached = kernel.dir.join("accel");
    match fs::read_to_string(&cached).as_deref().map(str::trim) {
        Ok("kvm") => return Ok("kvm"),
        Ok("tcg") => return Ok("tcg"),
        _ => {}
    }
    let kvm_usable = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let accel = if kvm_usable && boot_with(kernel, shares, "exit 0", KVM_PROBE, "kvm", false)? == Some(0) {
        "kvm"
    } else {
        "tcg"
    };
    fs::write(&cached, accel)?;
    Ok(accel)
}

/// One boot; `None` when the guest wrote no exit status (killed at `timeout`).
fn boot_with(
    kernel: &Kernel,
    shares: &Shares,
    script: &str,
    timeout: Duration,
    accel: &str,
    show: bool,
) -> Result<Option<i32>> {
    let work = shares.work();
    let exit_file = work.join(".vm-exit");
    let _ = fs::remove_file(&exit_file);
    fs::write(work.join(".vm-cmd.sh"), script)?;
    let work_str = work.to_str().context("the work directory's path is not UTF-8")?;
    let mut qemu = Command::new("qemu-system-x86_64");
    let (accel_arg, cpu) = match accel {
        "kvm" => ("kvm", "host"),
        _ => ("tcg,thread=multi", "max"),
    };
    qemu.args([
        "-accel",
        accel_arg,
        "-cpu",
        cpu,
        "-smp",
        "2",
        "-m",
        &format!("{GUEST_MIB}M"),
    ])
    .args([
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(kernel.vmlinuz())
    .arg("-initrd")
    .arg(kernel.initrd())
    .arg("-append")
    .arg(format!(
        "console=ttyS0 quiet loglevel=1 panic=-1 vmwork={work_str} vmfs={} vmmounts={}",
        kernel.share.name(),
        shares.mounts()
    ))
    .stdin(Stdio::null());
    if !show {
        qemu.stdout(Stdio::null()).stderr(Stdio::null());
    }
    let mut daemons = Daemons(Vec::new());
    match kernel.share {
        Share::NineP => {
            for (tag, dir, ro) in &shares.0 {
                let readonly = if *ro { ",readonly=on" } else { "" };
                qemu.arg("-fsdev")
                    .arg(format!(
                        "local,id={tag},path={},security_model=none,multidevs=remap{readonly}",
                        dir.display()
                    ))
                    .args(["-device", &format!("virtio-9p-pci,fsdev={tag},mount_tag={tag}")]);
            }
        }
        Share::VirtioFs => {
            qemu.args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={GUEST_MIB}M,share=on"),
                "-numa",
                "node,memdev=mem",
            ]);
            for (tag, dir, _) in &shares.0 {
                let socket = work.join(format!(".vm-{tag}.sock"));
                let _ = fs::remove_file(&socket);
                let daemon = Command::new(VIRTIOFSD)
                    .arg(format!("--socket-path={}", socket.display()))
                    .args(["-o", &format!("source={}", dir.display()), "-o", "cache=auto"])
                    // Its default sandbox pivot_root's into the source, which fails for `/`.
                    .args(["-o", "sandbox=chroot"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .with_context(|| format!("cannot start {VIRTIOFSD} (package qemu-system-common)"))?;
                daemons.0.push(daemon);
                wait_for(&socket)?;
                qemu.args(["-chardev", &format!("socket,id={tag},path={}", socket.display())])
                    .args(["-device", &format!("vhost-user-fs-pci,chardev={tag},tag={tag}")]);
            }
        }
    }
    let mut child = qemu
        .spawn()
        .context("cannot start qemu-system-x86_64 (package qemu-system-x86)")?;
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(daemons);
    Ok(fs::read_to_string(&exit_file).ok().and_then(|s| s.trim().parse().ok()))
}

/// virtiofsd daemons, ended when the guest is.
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for d in &mut self.0 {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// Waits (up to 5 s) for a daemon's socket to appear.
fn wait_for(socket: &Path) -> Result<()> {
    let started = Instant::now();
    while !socket.exists() {
        if started.elapsed() > Duration::from_secs(5) {
            bail!("{VIRTIOFSD} made no socket at {} within 5 s", socket.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &str = "\
linux-image-6.1.0-55-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-57-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-57-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-57-rt-amd64-unsigned - Linux 6.1 for 64-bit PCs, PREEMPT_RT
linux-image-6.12.9+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.118+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.118+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud
";

    #[test]
    fn the_newest_package_of_a_series_and_flavour_is_chosen() {
        let pick = |s: &str| s.parse::<Spec>().unwrap().newest(SEARCH);
        assert_eq!(pick("6.1").as_deref(), Some("linux-image-6.1.0-57-amd64-unsigned"));
        assert_eq!(
            pick("6.1-cloud").as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64-unsigned")
        );
        assert_eq!(
            pick("6.12").as_deref(),
            Some("linux-image-6.12.118+deb12-amd64-unsigned")
        );
        assert_eq!(pick("6.2"), None);
    }

    #[test]
    fn specs_parse_and_print_back() {
        for s in ["6.1", "6.1-cloud", "6.12"] {
            assert_eq!(s.parse::<Spec>().unwrap().to_string(), s);
        }
        for bad in ["6", "six", "6.1.0", "6.1-rt", ""] {
            assert!(bad.parse::<Spec>().is_err(), "{bad}");
        }
    }
}
