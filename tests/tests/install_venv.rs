//! `tools/install-venv.sh` (the Makefile's pinned Python environments): two
//! makes building one environment at once both succeed and build it once,
//! what they publish is always complete, and a build that fails leaves
//! nothing behind. Offline: the requirements install nothing, or fail at
//! once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, ensure};
use chat_e2e::{unique, workspace_root};

fn install(dest: &Path, requirements: &Path) -> std::thread::JoinHandle<std::io::Result<Output>> {
    let (dest, requirements) = (dest.to_owned(), requirements.to_owned());
    std::thread::spawn(move || {
        Command::new("bash")
            .arg(workspace_root().join("tools/install-venv.sh"))
            .arg(&dest)
            .arg(&requirements)
            .arg("python3")
            .output()
    })
}

fn succeeded(out: std::io::Result<Output>) -> anyhow::Result<()> {
    let out = out.context("running install-venv.sh")?;
    ensure!(out.status.success(), "install-venv.sh failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The directories next to `dest` that a build made (`dest-XXXXXXXX`).
fn builds(dest: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let name = dest.file_name().context("name")?.to_string_lossy().into_owned();
    let dir = dest.parent().context("parent")?;
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&format!("{name}-")) && !n.ends_with(".lock")
            })
        })
        .collect())
}

#[test]
fn concurrent_installs_build_once_and_publish_a_complete_environment() -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(unique("venvs-"));
    std::fs::create_dir_all(&root)?;
    let result = (|| {
        let requirements = root.join("requirements.txt");
        std::fs::write(&requirements, "# nothing to install: offline\n")?;
        let dest = root.join("venv-test");
        let (a, b) = (install(&dest, &requirements), install(&dest, &requirements));
        succeeded(a.join().map_err(|_| anyhow::anyhow!("thread panicked"))?)?;
        succeeded(b.join().map_err(|_| anyhow::anyhow!("thread panicked"))?)?;
        ensure!(std::fs::symlink_metadata(&dest)?.file_type().is_symlink(), "published by a symlink");
        ensure!(dest.join(".installed").exists(), "what is published is complete");
        ensure!(builds(&dest)?.len() == 1, "built once: {:?}", builds(&dest)?);
        let python = Command::new(dest.join("bin/python")).args(["-c", "import sys; print(sys.prefix)"]).output()?;
        ensure!(python.status.success(), "the environment's python runs through the symlink");
        // Complete: a third install changes nothing.
        let before = std::fs::read_link(&dest)?;
        succeeded(install(&dest, &requirements).join().map_err(|_| anyhow::anyhow!("thread panicked"))?)?;
        ensure!(std::fs::read_link(&dest)? == before, "a complete environment is never rebuilt");
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&root);
    result
}

#[test]
fn a_failed_install_leaves_nothing_behind() -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(unique("venvs-"));
    std::fs::create_dir_all(&root)?;
    let result = (|| {
        let requirements = root.join("requirements.txt");
        // A local path that does not exist: pip fails without the network.
        std::fs::write(&requirements, format!("{}\n", root.join("no-such-project").display()))?;
        let dest = root.join("venv-broken");
        let out = install(&dest, &requirements).join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
        ensure!(!out.status.success(), "an uninstallable requirement fails the install");
        ensure!(!dest.exists(), "nothing published");
        ensure!(builds(&dest)?.is_empty(), "its build directory is removed: {:?}", builds(&dest)?);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&root);
    result
}
