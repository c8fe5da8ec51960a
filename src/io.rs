//! Crash-safe file writing: a reader sees either the old content or the new, never a part.
//!
//! Files: write a temporary sibling, fsync it, rename it over the target, fsync the directory.
//! Directories (checkpoints): write every file into the sibling `<dir>.tmp-<pid>`, fsync, then
//! move the old `dir` aside to `<dir>.old-<pid>`, rename the new one into place, and only then
//! delete the old one. A crash while the new directory is being written leaves `dir` untouched
//! and a stray `<dir>.tmp-<pid>`, which is harmless (it is never read, and the next write from a
//! process with that pid clears it). A crash in the short window between the two renames leaves
//! no `dir` but a complete `<dir>.old-<pid>`; [`recover_dir`] puts it back.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Result};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The directory holding `path` ("." for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `parent/<file name of path><suffix>`.
fn sibling(path: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let name = path.file_name()?;
    let mut s = OsString::from(prefix);
    s.push(name);
    s.push(suffix);
    Some(parent_of(path).join(s))
}

/// Flushes a directory's entries (renames, creations) to disk. Filesystems that cannot fsync a
/// directory answer `InvalidInput`/`Unsupported`; that is not an error here.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        match File::open(dir).and_then(|f| f.sync_all()) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
                ) =>
            {
                Ok(())
            }
            r => r,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn remove_any(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsync, then rename,
/// so a crash never leaves a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = sibling(path, ".", &format!(".tmp-{}-{n}", std::process::id()))
        .ok_or_else(|| anyhow!("failed to write {path:?}: not a file path"))?;
    let result = write_synced(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        bail!("failed to write {path:?}: {e}");
    }
    sync_dir(parent_of(path)).map_err(|e| anyhow!("failed to write {path:?}: {e}"))
}

fn check_file_names(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (name, _) in files {
        let bad =
            name.is_empty() || *name == "." || *name == ".." || name.contains(['/', '\\', '\0']);
        if bad {
            bail!("failed to write directory {dir:?}: invalid file name {name:?}");
        }
        if !seen.insert(*name) {
            bail!("failed to write directory {dir:?}: file name {name:?} given twice");
        }
    }
    Ok(())
}

/// Writes `files` (name, content) as the complete contents of directory `dir`, atomically: they
/// go into `<dir>.tmp-<pid>` first, and an old `dir` is removed only after the new one is
/// complete and renamed into place. File names must be plain names (no separators).
pub fn write_dir_atomic(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    let ctx = |e: io::Error| anyhow!("failed to write directory {dir:?}: {e}");
    let pid = std::process::id();
    let (tmp, old) = match (
        sibling(dir, "", &format!(".tmp-{pid}")),
        sibling(dir, "", &format!(".old-{pid}")),
    ) {
        (Some(t), Some(o)) => (t, o),
        _ => bail!("failed to write directory {dir:?}: not a directory path"),
    };
    check_file_names(dir, files)?;

    // Stage the new directory. A leftover from an earlier crash with our pid is discarded.
    if exists(&tmp) {
        remove_any(&tmp).map_err(ctx)?;
    }
    let staged = fs::create_dir(&tmp).and_then(|()| {
        for (name, bytes) in files {
            write_synced(&tmp.join(name), bytes)?;
        }
        sync_dir(&tmp)
    });
    if let Err(e) = staged {
        let _ = fs::remove_dir_all(&tmp);
        return Err(ctx(e));
    }

    let parent = parent_of(dir);
    if exists(dir) {
        if exists(&old) {
            remove_any(&old).map_err(ctx)?;
        }
        if let Err(e) = fs::rename(dir, &old) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(ctx(e));
        }
        if let Err(e) = fs::rename(&tmp, dir) {
            // Put the old directory back; the new one is dropped.
            let _ = fs::rename(&old, dir);
            let _ = fs::remove_dir_all(&tmp);
            return Err(ctx(e));
        }
        sync_dir(parent).map_err(ctx)?;
        // The new directory is durable in place; the old one is now garbage. Failing to delete
        // it loses nothing, so it is not reported.
        let _ = remove_any(&old);
    } else {
        if let Err(e) = fs::rename(&tmp, dir) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(ctx(e));
        }
        sync_dir(parent).map_err(ctx)?;
    }
    Ok(())
}

/// After a crash inside [`write_dir_atomic`]'s rename window, `dir` may be missing while a
/// complete previous version sits at `<dir>.old-<pid>`. If `dir` does not exist, this renames
/// the most recently modified such directory back to `dir` and returns `Ok(true)`; otherwise it
/// changes nothing and returns `Ok(false)`.
pub fn recover_dir(dir: &Path) -> Result<bool> {
    if exists(dir) {
        return Ok(false);
    }
    let name = dir
        .file_name()
        .ok_or_else(|| anyhow!("failed to recover directory {dir:?}: not a directory path"))?;
    let prefix = format!("{}.old-", name.to_string_lossy());
    let parent = parent_of(dir);
    let entries = match fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => bail!("failed to recover directory {dir:?}: {e}"),
    };
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|s| s.strip_prefix(&prefix)) else {
            continue;
        };
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_dir() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _)| mtime > *t) {
            best = Some((mtime, entry.path()));
        }
    }
    let Some((_, old)) = best else {
        return Ok(false);
    };
    fs::rename(&old, dir)
        .map_err(|e| anyhow!("failed to recover directory {dir:?} from {old:?}: {e}"))?;
    sync_dir(parent).map_err(|e| anyhow!("failed to recover directory {dir:?}: {e}"))?;
    Ok(true)
}

/// A fresh, empty folder under the system temp dir, unique to this process, call and `tag`:
/// for tests and examples that need a place on disk.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("gdn-{tag}-{}-{nanos}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create scratch folder {}: {e}", dir.display()));
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_creates_and_replaces_without_leftovers() {
        let d = scratch_dir("file");
        let p = d.join("a.json");
        write_atomic(&p, b"first").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second, longer");
        write_atomic(&p, b"").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"");
        assert_eq!(listing(&d), vec!["a.json"]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn write_atomic_errors_name_the_path() {
        let d = scratch_dir("file-err");
        let p = d.join("no-such-dir").join("x.bin");
        let e = write_atomic(&p, b"x").unwrap_err().to_string();
        assert!(e.contains("failed to write") && e.contains("x.bin"), "{e}");
        // A directory in the way: the rename fails, the old entry survives, no temp is left.
        let sub = d.join("sub");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("keep"), b"k").unwrap();
        let e = write_atomic(&sub, b"x").unwrap_err().to_string();
        assert!(e.contains("sub"), "{e}");
        assert_eq!(listing(&d), vec!["sub"]);
        assert_eq!(fs::read(sub.join("keep")).unwrap(), b"k");
        assert!(write_atomic(Path::new("/"), b"x").is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn write_dir_atomic_creates_and_replaces() {
        let d = scratch_dir("dir");
        let ck = d.join("ckpt");
        write_dir_atomic(
            &ck,
            &[("a.bin", vec![1, 2, 3]), ("meta.json", b"{}".to_vec())],
        )
        .unwrap();
        assert_eq!(listing(&ck), vec!["a.bin", "meta.json"]);
        assert_eq!(fs::read(ck.join("a.bin")).unwrap(), vec![1, 2, 3]);

        // Replacing drops files that are not in the new set.
        write_dir_atomic(
            &ck,
            &[("b.bin", vec![9]), ("meta.json", b"{\"s\":2}".to_vec())],
        )
        .unwrap();
        assert_eq!(listing(&ck), vec!["b.bin", "meta.json"]);
        assert_eq!(fs::read(ck.join("meta.json")).unwrap(), b"{\"s\":2}");
        assert_eq!(listing(&d), vec!["ckpt"], "no tmp or old directories left");

        write_dir_atomic(&ck, &[]).unwrap();
        assert!(listing(&ck).is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn leftover_tmp_dir_is_harmless() {
        let d = scratch_dir("leftover");
        let ck = d.join("ckpt");
        write_dir_atomic(&ck, &[("x", b"old".to_vec())]).unwrap();
        // A crashed earlier write (ours, and another process's) left partial staging dirs.
        let mine = d.join(format!("ckpt.tmp-{}", std::process::id()));
        fs::create_dir(&mine).unwrap();
        fs::write(mine.join("partial"), b"p").unwrap();
        let other = d.join("ckpt.tmp-999999999");
        fs::create_dir(&other).unwrap();
        assert_eq!(fs::read(ck.join("x")).unwrap(), b"old");
        write_dir_atomic(&ck, &[("x", b"new".to_vec())]).unwrap();
        assert_eq!(listing(&ck), vec!["x"]);
        assert_eq!(fs::read(ck.join("x")).unwrap(), b"new");
        assert_eq!(listing(&d), vec!["ckpt", "ckpt.tmp-999999999"]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn write_dir_atomic_rejects_bad_names_and_keeps_old_dir() {
        let d = scratch_dir("badnames");
        let ck = d.join("ckpt");
        write_dir_atomic(&ck, &[("x", b"old".to_vec())]).unwrap();
        for bad in ["", ".", "..", "a/b", "a\\b"] {
            let e = write_dir_atomic(&ck, &[(bad, vec![])])
                .unwrap_err()
                .to_string();
            assert!(e.contains("invalid file name") && e.contains("ckpt"), "{e}");
        }
        let e = write_dir_atomic(&ck, &[("y", vec![]), ("y", vec![])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
        assert_eq!(fs::read(ck.join("x")).unwrap(), b"old");
        assert_eq!(listing(&d), vec!["ckpt"]);

        let e = write_dir_atomic(&d.join("missing").join("ckpt"), &[("x", vec![])])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("failed to write directory") && e.contains("missing"),
            "{e}"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn recover_dir_restores_old_after_a_crash_between_renames() {
        let d = scratch_dir("recover");
        let ck = d.join("ckpt");
        assert!(!recover_dir(&ck).unwrap());
        // Simulate the crash: the old version was moved aside, the new one not yet in place.
        let old = d.join("ckpt.old-4242");
        fs::create_dir(&old).unwrap();
        fs::write(old.join("x"), b"prev").unwrap();
        fs::write(d.join("ckpt.old-junk"), b"not ours").unwrap();
        assert!(recover_dir(&ck).unwrap());
        assert_eq!(fs::read(ck.join("x")).unwrap(), b"prev");
        assert!(!recover_dir(&ck).unwrap(), "nothing to do once dir exists");
        assert!(!recover_dir(&d.join("missing").join("ckpt")).unwrap());
        fs::remove_dir_all(&d).unwrap();
    }
}
