//! Editing a file store's manifest directory one object at a time: find,
//! replace, add and remove single documents while every other document
//! keeps its bytes (comments, order, formatting), and read the statuses the
//! controller writes. The format is the controller's
//! (`meshfed_controller::manifest`); editing it is meshctl's. Plain sync std::fs: the CLI calls it
//! from sync and async code alike, and the files are small.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use meshfed_controller::manifest::{
    MAX_DEPTH, MAX_FILE_BYTES, STATUS_DIR, collect_files, from_yaml, split_documents, to_yaml,
    write_atomic,
};
use meshfed_controller::{ObjKey, StoreError};

/// A file store directory, opened for editing one object at a time.
#[derive(Debug, Clone)]
pub struct ManifestDir {
    dir: PathBuf,
}

/// An object and the file that defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The file.
    pub path: PathBuf,
    /// The object, as parsed.
    pub value: Value,
}

/// What [`ManifestDir::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// No document held the object; one was added.
    Created,
    /// The object's document was replaced.
    Updated,
    /// The object already had this value; nothing was written.
    Unchanged,
}

/// What a document is matched by.
#[derive(Debug, PartialEq, Eq)]
struct Id {
    api_version: String,
    kind: String,
    key: ObjKey,
}

/// A manifest file as read; `splits` has every document's byte range,
/// blank ones too, so the separators between them can be found.
struct File {
    path: PathBuf,
    text: String,
    splits: Vec<Range<usize>>,
    docs: Vec<Doc>,
}

struct Doc {
    /// Index into `File::splits`.
    index: usize,
    line: usize,
    id: Id,
    value: Value,
}

type Hit<'a> = (&'a File, &'a Doc);

// === impl ManifestDir ===

impl ManifestDir {
    /// The directory must exist and be a directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        match std::fs::metadata(&dir).map_err(io(&dir))?.is_dir() {
            true => Ok(Self { dir }),
            false => Err(io(&dir)(std::io::Error::other("not a directory"))),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every object of this apiVersion and kind the file store would read,
    /// sorted by (namespace, name); an object defined twice is listed twice.
    pub fn list(&self, api_version: &str, kind: &str) -> Result<Vec<Found>, StoreError> {
        let files = self.scan()?;
        let mut hits: Vec<_> = hits(&files)
            .filter(|(_, d)| d.id.api_version == api_version && d.id.kind == kind)
            .collect();
        hits.sort_by(|(_, a), (_, b)| a.id.key.cmp(&b.id.key));
        Ok(hits.into_iter().map(found).collect())
    }

    /// One object; an error if two documents define it, since the store
    /// would silently use the first.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        key: &ObjKey,
    ) -> Result<Option<Found>, StoreError> {
        let files = self.scan()?;
        Ok(find(&files, &Id::new(api_version, kind, key))?.map(found))
    }

    /// Writes the object where it is defined (its document's leading comments
    /// kept), or else into `new_file`, relative to the directory, after a
    /// `---` if that file exists.
    pub fn put(&self, object: &Value, new_file: &Path) -> Result<Change, StoreError> {
        let id = identity(object).map_err(StoreError::Refused)?;
        let files = self.scan()?;
        let yaml = to_yaml(&id.key, object)?;
        if let Some((file, doc)) = find(&files, &id)? {
            if doc.value == *object {
                return Ok(Change::Unchanged);
            }
            let Range { start, end } = file.splits[doc.index];
            let comments = leading_comments(&file.text[start..end]);
            let text = [&file.text[..start], comments, &yaml, &file.text[end..]].concat();
            write_atomic(&file.path, &text)?;
            return Ok(Change::Updated);
        }
        let path = self.new_path(new_file)?;
        let text = match files.iter().find(|f| f.path == path) {
            Some(f) if f.text.is_empty() => yaml,
            Some(f) if f.text.ends_with('\n') => [&f.text, "---\n", &yaml].concat(),
            Some(f) => [&f.text, "\n---\n", &yaml].concat(),
            None => yaml,
        };
        write_atomic(&path, &text)?;
        Ok(Change::Created)
    }

    /// Removes the object's document and the separator next to it; a file
    /// left with nothing but comments is removed. `false` if it was not there.
    pub fn delete(&self, api_version: &str, kind: &str, key: &ObjKey) -> Result<bool, StoreError> {
        let files = self.scan()?;
        let Some((file, doc)) = find(&files, &Id::new(api_version, kind, key))? else {
            return Ok(false);
        };
        let s = &file.splits;
        let cut = match doc.index {
            0 => s[0].start..s.get(1).map_or(s[0].end, |next| next.start),
            i => s[i - 1].end..s[i].end,
        };
        let text = [&file.text[..cut.start], &file.text[cut.end..]].concat();
        match is_blank(&text) {
            true => std::fs::remove_file(&file.path).map_err(io(&file.path))?,
            false => write_atomic(&file.path, &text)?,
        }
        Ok(true)
    }

    /// What the controller wrote to `status/<plural>/<namespace>.<name>.yaml`.
    pub fn status(&self, plural: &str, key: &ObjKey) -> Result<Option<Value>, StoreError> {
        let name = format!("{}.{}.yaml", key.namespace, key.name);
        if [plural, &name]
            .iter()
            .any(|p| p.contains(['/', '\\']) || p.starts_with('.'))
        {
            return Err(StoreError::Refused(format!(
                "no status file for {plural} {key}"
            )));
        }
        let path = self.dir.join(STATUS_DIR).join(plural).join(name);
        let Some(text) = read_text(&path)? else {
            return Ok(None);
        };
        from_yaml(&text)
            .map(Some)
            .map_err(|(l, c, why)| broken(&path, l, c, why))
    }

    /// Reads every file the store reads; a broken one fails the whole, since
    /// an object it holds cannot be seen.
    fn scan(&self) -> Result<Vec<File>, StoreError> {
        let mut paths = Vec::new();
        collect_files(&self.dir, 0, &mut paths);
        let mut files = Vec::new();
        for (path, _) in paths {
            if let Some(text) = read_text(&path)? {
                files.push(parse(path, text)?);
            }
        }
        Ok(files)
    }

    /// A new object must go where the store will read it.
    fn new_path(&self, file: &Path) -> Result<PathBuf, StoreError> {
        let parts: Vec<_> = file
            .components()
            .map(|c| match c {
                Component::Normal(p) => p.to_str().filter(|p| !p.starts_with('.')),
                _ => None,
            })
            .collect();
        let path = self.dir.join(file);
        let yaml = |n: &str| n.ends_with(".yaml") || n.ends_with(".yml");
        if parts.len() <= MAX_DEPTH
            && parts.iter().all(Option::is_some)
            && parts.first() != Some(&Some(STATUS_DIR))
            && parts.last().is_some_and(|n| n.is_some_and(yaml))
            // There but not scanned: a symlink or a folder the store skips.
            && !path.symlink_metadata().is_ok_and(|m| !m.is_file())
        {
            return Ok(path);
        }
        Err(StoreError::Refused(format!(
            "{}: a new object's file must be a .yaml or .yml file the store reads: a relative \
             path without `..`, at most {MAX_DEPTH} deep, not hidden, not under {STATUS_DIR}/",
            file.display()
        )))
    }
}

impl Id {
    fn new(api_version: &str, kind: &str, key: &ObjKey) -> Self {
        let (api_version, kind, key) = (api_version.into(), kind.into(), key.clone());
        Self {
            api_version,
            kind,
            key,
        }
    }
}

/// Every object document, file by file.
fn hits(files: &[File]) -> impl Iterator<Item = Hit<'_>> {
    files
        .iter()
        .flat_map(|f| f.docs.iter().map(move |d| (f, d)))
}

fn found((file, doc): Hit<'_>) -> Found {
    let (path, value) = (file.path.clone(), doc.value.clone());
    Found { path, value }
}

/// The only document defining the object, if any.
fn find<'a>(files: &'a [File], id: &Id) -> Result<Option<Hit<'a>>, StoreError> {
    let mut hits = hits(files).filter(|(_, d)| d.id == *id);
    let first = hits.next();
    if let (Some((f1, d1)), Some((f2, d2))) = (first, hits.next()) {
        let (at1, at2) = (f1.path.display(), f2.path.display());
        return Err(StoreError::Refused(format!(
            "{} {} is defined twice, at {at1}:{} and {at2}:{}; remove one first",
            id.kind, id.key, d1.line, d2.line
        )));
    }
    Ok(first)
}

fn parse(path: PathBuf, text: String) -> Result<File, StoreError> {
    let (mut splits, mut docs) = (Vec::new(), Vec::new());
    for (index, (line, doc)) in split_documents(&text).into_iter().enumerate() {
        // `split_documents` yields slices of `text`.
        let start = doc.as_ptr().addr() - text.as_ptr().addr();
        splits.push(start..start + doc.len());
        if is_blank(doc) {
            continue;
        }
        let at = |l: usize, c: usize, why| broken(&path, line + l.max(1) - 1, c, why);
        let value: Value = from_yaml(doc).map_err(|(l, c, why)| at(l, c, why))?;
        let id = identity(&value).map_err(|why| at(1, 1, why))?;
        docs.push(Doc {
            index,
            line,
            id,
            value,
        });
    }
    Ok(File {
        path,
        text,
        splits,
        docs,
    })
}

/// The object's [`Id`], or why it has none. A namespace-less object is in
/// `default`, where the API server would put it, unless cluster-scoped.
fn identity(value: &Value) -> Result<Id, String> {
    fn field<'v>(v: Option<&'v Value>, name: &str) -> Option<&'v str> {
        v?.get(name)?.as_str().filter(|s| !s.is_empty())
    }
    let meta = value.get("metadata");
    let (Some(api_version), Some(kind)) =
        (field(Some(value), "apiVersion"), field(Some(value), "kind"))
    else {
        return Err("document has no apiVersion or kind".into());
    };
    let name = field(meta, "name").ok_or_else(|| format!("{kind} has no metadata.name"))?;
    let namespace = match kind {
        "Node" | "Namespace" | "CustomResourceDefinition" => "",
        "ClusterRole" | "ClusterRoleBinding" => "",
        _ => field(meta, "namespace").unwrap_or("default"),
    };
    Ok(Id::new(api_version, kind, &ObjKey::new(namespace, name)))
}

fn is_blank(text: &str) -> bool {
    text.lines()
        .all(|l| l.trim().is_empty() || l.trim().starts_with('#'))
}

/// The comment and blank lines a document opens with.
fn leading_comments(doc: &str) -> &str {
    let lines = doc.split_inclusive('\n').take_while(|l| is_blank(l));
    &doc[..lines.map(str::len).sum()]
}

/// The file's text, `None` if it is gone; bounded like the store's reads.
fn read_text(path: &Path) -> Result<Option<String>, StoreError> {
    let len = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    if len > MAX_FILE_BYTES {
        let why =
            format!("file is {len} bytes, more than the {MAX_FILE_BYTES} a manifest file may be");
        return Err(io(path)(std::io::Error::other(why)));
    }
    std::fs::read_to_string(path).map(Some).map_err(io(path))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::Io { path, source }
}

fn broken(path: &Path, line: usize, column: usize, reason: String) -> StoreError {
    let path = path.display().to_string();
    StoreError::BrokenManifest {
        path,
        line,
        column,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::json;

    use super::*;

    const L: &str = "meshfed.io/v1alpha1";
    const THREE: &str = "# demo links\napiVersion: meshfed.io/v1alpha1\nkind: Link\n\
        metadata: {name: east, namespace: ns}\n---\n# the west one\n\
        apiVersion: meshfed.io/v1alpha1\nkind: Link\nmetadata:\n  name: west\n  namespace: ns\n\
        spec: {gateway: 'old:1'}  # moved\n--- # last\n# north\napiVersion: meshfed.io/v1alpha1\n\
        kind: Link\nmetadata:\n  name: north\n  namespace: ns\n";

    fn link(name: &str, gateway: &str) -> Value {
        json!({"apiVersion": L, "kind": "Link", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"gateway": gateway}})
    }

    fn yaml(v: &Value) -> String {
        serde_saphyr::to_string(v).expect("serializes")
    }

    /// A directory holding `files` (path, text) and the file `links.yaml`.
    fn dir(files: &[(&str, &str)]) -> (tempfile::TempDir, ManifestDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        for (rel, text) in files.iter().chain([&("links.yaml", THREE)]) {
            let path = tmp.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("in tmp")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        let dir = ManifestDir::open(tmp.path()).expect("opens");
        let links = tmp.path().join("links.yaml");
        (tmp, dir, links)
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("read")
    }

    #[test]
    fn put_creates_a_new_file_or_appends() {
        let api = "apiVersion: v1\nkind: Service\nmetadata: {name: api}";
        let (tmp, dir, _) = dir(&[("a.yml", api)]);
        let south = link("south", "a:1");
        assert_eq!(
            dir.put(&south, Path::new("s/south.yaml")).expect("puts"),
            Change::Created
        );
        let path = tmp.path().join("s/south.yaml");
        assert_eq!(read(&path), yaml(&south));
        let found = Found { path, value: south };
        assert_eq!(
            dir.get(L, "Link", &ObjKey::new("ns", "south"))
                .expect("gets"),
            Some(found)
        );
        let up = link("up", "b:1");
        assert_eq!(
            dir.put(&up, Path::new("a.yml")).expect("puts"),
            Change::Created
        );
        assert_eq!(
            read(&tmp.path().join("a.yml")),
            format!("{api}\n---\n{}", yaml(&up))
        );
        for bad in [
            "status/x.yaml",
            ".x.yaml",
            "../x.yaml",
            "x.json",
            "a/b/c/d/e.yaml",
        ] {
            let err = dir
                .put(&link("down", "b:1"), Path::new(bad))
                .expect_err(bad);
            assert!(err.to_string().starts_with(bad), "{err}");
        }
    }

    #[test]
    fn put_replaces_only_its_document() {
        let (tmp, dir, links) = dir(&[]);
        let west = link("west", "new:1");
        assert_eq!(
            dir.put(&west, Path::new("x.yaml")).expect("puts"),
            Change::Updated
        );
        let (head, rest) = THREE.split_at(THREE.find("# the west").expect("west"));
        let tail = &rest[rest.find("--- # last").expect("last")..];
        assert_eq!(
            read(&links),
            format!("{head}# the west one\n{}{tail}", yaml(&west))
        );
        assert!(!tmp.path().join("x.yaml").exists());
    }

    #[test]
    fn put_of_the_same_object_touches_nothing() {
        let (_tmp, dir, links) = dir(&[]);
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let file = std::fs::File::options()
            .write(true)
            .open(&links)
            .expect("opens");
        file.set_modified(old).expect("sets mtime");
        let north = dir
            .get(L, "Link", &ObjKey::new("ns", "north"))
            .expect("gets");
        let put = dir.put(&north.expect("there").value, Path::new("x.yaml"));
        assert_eq!(put.expect("puts"), Change::Unchanged);
        assert_eq!(read(&links), THREE);
        assert_eq!(
            links.metadata().and_then(|m| m.modified()).expect("mtime"),
            old
        );
    }

    #[test]
    fn delete_removes_only_its_document_then_the_emptied_file() {
        let (_tmp, dir, links) = dir(&[]);
        let delete = |name| {
            dir.delete(L, "Link", &ObjKey::new("ns", name))
                .expect("deletes")
        };
        assert!(delete("west"));
        let (west, last) = (THREE.find("---\n# the west"), THREE.find("--- # last"));
        let (west, last) = (west.expect("west"), last.expect("last"));
        assert_eq!(
            read(&links),
            format!("{}{}", &THREE[..west], &THREE[last..])
        );
        assert!(!delete("west"));
        assert!(delete("east"));
        assert_eq!(
            read(&links),
            THREE[last..].trim_start_matches("--- # last\n")
        );
        assert!(delete("north"));
        assert!(!links.exists(), "nothing but comments was left");
    }

    #[test]
    fn get_refuses_an_object_defined_twice() {
        let east = yaml(&link("east", "a:1"));
        let (_tmp, dir, _) = dir(&[("b/c.yaml", &format!("# c\n---\n{east}"))]);
        let err = dir
            .get(L, "Link", &ObjKey::new("ns", "east"))
            .expect_err("twice");
        let msg = err.to_string();
        assert!(
            msg.contains("c.yaml:3 and ") && msg.contains("links.yaml:1;"),
            "{msg}"
        );
        assert!(dir.delete(L, "Link", &ObjKey::new("ns", "east")).is_err());
    }

    #[test]
    fn a_broken_file_stops_every_edit() {
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n\
                   apiVersion: v1\nkind: Service\nmetadata: {name: [b\n";
        let (tmp, dir, _) = dir(&[("bad.yaml", bad)]);
        let err = dir
            .put(&link("south", "a:1"), Path::new("s.yaml"))
            .expect_err("broken");
        let want = format!("{}:7:", tmp.path().join("bad.yaml").display());
        assert!(
            matches!(err, StoreError::BrokenManifest { line: 7, .. }),
            "{err:?}"
        );
        assert!(err.to_string().starts_with(&want), "{err}");
        assert!(!tmp.path().join("s.yaml").exists());
        assert!(dir.list(L, "Link").is_err());
        std::fs::write(
            tmp.path().join("bad.yaml"),
            "kind: Link\nmetadata: {name: a}\n",
        )
        .expect("write");
        let err = dir
            .delete(L, "Link", &ObjKey::new("ns", "west"))
            .expect_err("no apiVersion");
        assert!(
            err.to_string()
                .contains("bad.yaml:1:1: document has no apiVersion"),
            "{err}"
        );
    }

    #[test]
    fn status_reads_what_the_controller_wrote() {
        let mut west = link("west", "a:1");
        west["status"] = json!({"conditions": []});
        let (_tmp, dir, _) = dir(&[("status/links/ns.west.yaml", &yaml(&west))]);
        assert_eq!(
            dir.status("links", &ObjKey::new("ns", "west"))
                .expect("reads"),
            Some(west)
        );
        assert_eq!(
            dir.status("links", &ObjKey::new("ns", "east"))
                .expect("reads"),
            None
        );
        assert!(dir.status("..", &ObjKey::new("ns", "west")).is_err());
    }

    #[test]
    fn list_reads_mirrors_but_not_status_or_hidden_files() {
        let svc = |ns: &str, name: &str| {
            let meta = json!({"name": name, "namespace": ns});
            yaml(&json!({"apiVersion": "v1", "kind": "Service", "metadata": meta}))
        };
        let (tmp, dir, links) = dir(&[
            (
                "svc.yaml",
                &format!("{}---\n{}", svc("shop", "web"), svc("a", "z")),
            ),
            ("mirrors/shop/api.yaml", &svc("shop", "api")),
            ("status/services/shop.db.yaml", &svc("shop", "db")),
            (".draft.yaml", &svc("shop", "draft")),
            ("status/links/ns.west.yaml", &yaml(&link("west", "a:1"))),
        ]);
        let names = |found: Vec<Found>| -> Vec<(String, PathBuf)> {
            let name = |v: &Value| {
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            };
            found
                .into_iter()
                .map(|f| (name(&f.value), f.path))
                .collect()
        };
        let at = |p: &str| tmp.path().join(p);
        let services = [
            ("z", at("svc.yaml")),
            ("api", at("mirrors/shop/api.yaml")),
            ("web", at("svc.yaml")),
        ];
        let services = services.map(|(n, p)| (n.to_owned(), p)).to_vec();
        assert_eq!(names(dir.list("v1", "Service").expect("lists")), services);
        let links = ["east", "north", "west"]
            .map(|n| (n.to_owned(), links.clone()))
            .to_vec();
        assert_eq!(names(dir.list(L, "Link").expect("lists")), links);
    }
}
