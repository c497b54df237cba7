//! The image and the Kubernetes manifests (`Dockerfile`, `deploy/kubernetes/`) checked against
//! the config they carry, so that a change on one side that the other does not follow fails
//! here rather than in a cluster: the ports, the probes, the key files, the shutdown timing, the
//! selectors, the security context.
//!
//! The config is the file the kustomization's ConfigMap generator reads, found the way the pod
//! finds it: the image's `--config` path, through the Deployment's volume, to the generated
//! ConfigMap and its source file. It is validated by stickyd's own parser, with the key files
//! the pod would have (each projected item of the Secret a distinct test secret, nothing else),
//! so a key path that the volume does not provide fails as it would at start.
//!
//! Schema validation of the manifests (kubernetes-validate) and the Dockerfile lint (hadolint)
//! are in `.ci/run`; these tests need no tool and no network.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml_ng::Value;
use stickyd::config::{self, Config, KeySource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The kustomize base.
const BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

/// Labels every object of the base carries; the selectors use the first two.
const NAME_LABEL: &str = "app.kubernetes.io/name";
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The YAML documents of a file of the base (empty ones skipped).
fn documents(rel: &str) -> Vec<Value> {
    let text = read(&Path::new(BASE).join(rel));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The one object a manifest file holds.
fn object(rel: &str) -> Value {
    let mut docs = documents(rel);
    assert_eq!(docs.len(), 1, "{rel} holds one object");
    docs.remove(0)
}

/// A string at `v`, or a failure naming `what`.
fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is a string, not {v:?}"))
}

/// The items of a sequence at `v` (none when absent).
fn items(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], Vec::as_slice)
}

/// A `labels` or `matchLabels` map.
fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .unwrap_or_else(|| panic!("a label map, not {v:?}"))
        .iter()
        .map(|(k, v)| (text(k, "a label").into(), text(v, "a label value").into()))
        .collect()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// `kustomization.yaml`.
fn kustomization() -> Value {
    object("kustomization.yaml")
}

/// A generator's files as `key -> file of the base` (`key=path` or a bare path, whose key is
/// its file name, as kustomize reads them).
fn generator(kind: &str, name: &str) -> BTreeMap<String, PathBuf> {
    let k = kustomization();
    let generator = items(&k[kind])
        .iter()
        .find(|g| g["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("kustomization.yaml has a {kind} named {name}"));
    items(&generator["files"])
        .iter()
        .map(|f| {
            let f = text(f, "a generator file");
            let (key, path) = match f.split_once('=') {
                Some((key, path)) => (key.to_string(), path),
                None => (
                    Path::new(f).file_name().unwrap().to_string_lossy().into(),
                    f,
                ),
            };
            (key, Path::new(BASE).join(path))
        })
        .collect()
}

fn deployment() -> Value {
    object("deployment.yaml")
}

/// The pod template's spec.
fn pod_spec(d: &Value) -> &Value {
    &d["spec"]["template"]["spec"]
}

/// The stickyd container.
fn container(d: &Value) -> &Value {
    let all = items(&pod_spec(d)["containers"]);
    assert_eq!(all.len(), 1, "one container");
    &all[0]
}

/// Where a file of the pod comes from: a key of a ConfigMap or a Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    kind: &'static str,
    name: String,
    key: String,
}

/// The files the container's volume mounts give it (ConfigMap and Secret items, plain or
/// projected), by absolute path.
fn pod_files(d: &Value) -> BTreeMap<PathBuf, Source> {
    let volumes = items(&pod_spec(d)["volumes"]);
    let mut files = BTreeMap::new();
    for mount in items(&container(d)["volumeMounts"]) {
        let name = text(&mount["name"], "a volume mount's name");
        let at = Path::new(text(&mount["mountPath"], "mountPath"));
        let volume = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("volume {name} is declared"));
        let sources: Vec<&Value> = match volume["projected"]["sources"].as_sequence() {
            Some(s) => s.iter().collect(),
            None => vec![volume],
        };
        for s in sources {
            for (kind, field, name_field) in [
                ("ConfigMap", "configMap", "name"),
                ("Secret", "secret", "name"),
                ("Secret", "secret", "secretName"),
            ] {
                let Some(name) = s[field][name_field].as_str() else {
                    continue;
                };
                let listed = items(&s[field]["items"]);
                assert!(
                    !listed.is_empty(),
                    "{kind} {name} lists its items, so a missing key fails the mount"
                );
                for item in listed {
                    let key = text(&item["key"], "an item's key");
                    let path = at.join(text(&item["path"], "an item's path"));
                    let source = Source {
                        kind,
                        name: name.into(),
                        key: key.into(),
                    };
                    assert!(
                        files.insert(path.clone(), source).is_none(),
                        "{} is projected once",
                        path.display()
                    );
                }
            }
        }
    }
    files
}

/// The final stage of the Dockerfile, as `(instruction, arguments)` lines.
fn image_instructions() -> Vec<(String, String)> {
    let text = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"));
    let mut joined = Vec::new();
    let mut line = String::new();
    for l in text.lines().map(str::trim) {
        if l.starts_with('#') || (l.is_empty() && line.is_empty()) {
            continue;
        }
        match l.strip_suffix('\\') {
            Some(part) => line.push_str(part),
            None => {
                line.push_str(l);
                joined.push(std::mem::take(&mut line));
            }
        }
    }
    let last_from = joined
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    joined[last_from..]
        .iter()
        .filter_map(|l| {
            let (i, args) = l.split_once(' ')?;
            Some((i.to_ascii_uppercase(), args.trim().to_string()))
        })
        .collect()
}

/// The image's instruction `name` (its last occurrence in the final stage).
fn image(name: &str) -> String {
    image_instructions()
        .into_iter()
        .rev()
        .find(|(i, _)| i == name)
        .unwrap_or_else(|| panic!("the image has {name}"))
        .1
}

/// The config path the image runs with: `--config PATH` of its exec-form ENTRYPOINT.
fn image_config_path() -> PathBuf {
    let entrypoint: Vec<String> =
        serde_json::from_str(&image("ENTRYPOINT")).expect("ENTRYPOINT in exec form");
    let at = entrypoint
        .iter()
        .position(|a| a == "--config")
        .expect("ENTRYPOINT passes --config");
    PathBuf::from(&entrypoint[at + 1])
}

/// The secret a test pod finds in the file projected from `key` of the Secret.
fn test_secret(key: &str) -> Vec<u8> {
    format!("test secret for the Secret's key {key}, 32 bytes or more").into_bytes()
}

/// The pod's file system as the config sees it: the Secret's items hold [`test_secret`]s, and
/// nothing else exists (no environment either).
struct PodFiles(BTreeMap<PathBuf, Source>);

impl KeySource for PodFiles {
    fn file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        match self.0.get(path) {
            Some(s) if s.kind == "Secret" => Ok(test_secret(&s.key)),
            Some(s) => Err(std::io::Error::other(format!(
                "{} is the {} {} ({}), not a key",
                path.display(),
                s.kind,
                s.name,
                s.key
            ))),
            None => Err(std::io::ErrorKind::NotFound.into()),
        }
    }
    fn env(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
}

/// Everything the pod runs with, found from the image's entrypoint.
struct Pod {
    deployment: Value,
    files: PodFiles,
    /// The config's path in the pod.
    config_path: PathBuf,
    /// The file of the base the ConfigMap is generated from.
    config_source: PathBuf,
    /// Its TOML.
    toml: toml::Table,
}

impl Pod {
    fn load() -> Pod {
        let deployment = deployment();
        let files = pod_files(&deployment);
        let config_path = image_config_path();
        let source = files.get(&config_path).unwrap_or_else(|| {
            panic!(
                "the image's config {} is a file of the pod's volumes: {:?}",
                config_path.display(),
                files.keys().collect::<Vec<_>>()
            )
        });
        assert_eq!(
            source.kind, "ConfigMap",
            "the config comes from a ConfigMap"
        );
        let config_source = generator("configMapGenerator", &source.name)
            .remove(&source.key)
            .unwrap_or_else(|| panic!("the ConfigMap generator makes the key {}", source.key));
        let toml = read(&config_source)
            .parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("{}: {e}", config_source.display()));
        Pod {
            deployment,
            files: PodFiles(files),
            config_path,
            config_source,
            toml,
        }
    }

    /// The config parsed by stickyd as the pod would load it, with `[[discover]]` replaced by
    /// one `[[backend]]` at `backend` (a test has no cluster DNS to ask), and `edit` applied to
    /// the TOML first.
    fn config_with(&self, backend: SocketAddr, edit: impl FnOnce(&mut toml::Table)) -> Config {
        let mut t = self.toml.clone();
        assert!(
            t.remove("discover").is_some(),
            "the config discovers its backends"
        );
        let mut b = toml::Table::new();
        b.insert("id".into(), "app".into());
        b.insert("address".into(), backend.to_string().into());
        t.insert("backend".into(), toml::Value::Array(vec![b.into()]));
        edit(&mut t);
        self.parse(&t.to_string())
    }

    fn config(&self) -> Config {
        self.config_with("127.0.0.1:9".parse().unwrap(), |_| {})
    }

    fn parse(&self, text: &str) -> Config {
        let dir = self.config_path.parent().unwrap();
        let label = self.config_source.display().to_string();
        config::parse(text, &label, dir, &self.files).unwrap_or_else(|e| panic!("{e}"))
    }

    fn container(&self) -> &Value {
        container(&self.deployment)
    }

    /// The containerPort a probe's or a Service's port (a name or a number) stands for.
    fn container_port(&self, port: &Value) -> u16 {
        let ports = items(&self.container()["ports"]);
        let found = match port {
            Value::String(name) => ports.iter().find(|p| p["name"].as_str() == Some(name)),
            Value::Number(n) => ports
                .iter()
                .find(|p| p["containerPort"].as_u64() == n.as_u64()),
            other => panic!("a port is a name or a number, not {other:?}"),
        };
        let found = found.unwrap_or_else(|| panic!("port {port:?} is a port of the container"));
        assert_eq!(found["protocol"].as_str().unwrap_or("TCP"), "TCP");
        found["containerPort"].as_u64().unwrap().try_into().unwrap()
    }

    /// The pod template's labels.
    fn labels(&self) -> BTreeMap<String, String> {
        labels(&self.deployment["spec"]["template"]["metadata"]["labels"])
    }

    /// The Deployment's selector.
    fn selector(&self) -> BTreeMap<String, String> {
        labels(&self.deployment["spec"]["selector"]["matchLabels"])
    }
}

/// The `file:` paths among `specs` (TOML strings), resolved against `dir` as stickyd does.
fn key_files(specs: &[&toml::Value], dir: &Path) -> Vec<PathBuf> {
    specs
        .iter()
        .map(|s| {
            let s = s.as_str().expect("a key spec is a string");
            let path = s
                .strip_prefix("file:")
                .unwrap_or_else(|| panic!("{s}: the pod's keys are files of the Secret"));
            dir.join(path)
        })
        .collect()
}

#[test]
fn the_kustomization_lists_every_manifest_here_and_generates_from_files_here() {
    let k = kustomization();
    let listed: BTreeSet<String> = items(&k["resources"])
        .iter()
        .map(|r| text(r, "a resource").to_string())
        .collect();
    let here: BTreeSet<String> = std::fs::read_dir(BASE)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, here, "resources are the manifests of the base");
    let selector = Pod::load().selector();
    for rel in &listed {
        let o = object(rel);
        let name = text(&o["metadata"]["name"], "metadata.name");
        assert!(
            o["metadata"]["namespace"].is_null(),
            "{rel}: the base leaves the namespace to the user"
        );
        assert!(
            is_subset(&selector, &labels(&o["metadata"]["labels"])),
            "{rel}: {name} carries the app's labels"
        );
    }
    assert!(
        !listed.iter().any(|r| r.contains("example-app")),
        "the app's Service is the user's"
    );
    for (key, file) in generator("configMapGenerator", "stickyd-config") {
        assert!(file.is_file(), "{key}: {} exists", file.display());
    }
    // The key files are the user's: generated from files under secrets/, which git ignores.
    let keys = generator("secretGenerator", "stickyd-keys");
    assert_eq!(
        keys.keys().map(String::as_str).collect::<Vec<_>>(),
        ["admin-token", "current", "previous"]
    );
    let secrets = Path::new(BASE).join("secrets");
    for file in keys.values() {
        assert_eq!(file.parent(), Some(&*secrets), "{}", file.display());
    }
    let ignore = read(&secrets.join(".gitignore"));
    let rules: Vec<&str> = ignore.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(rules, ["*", "!.gitignore"], "secrets/ is never committed");
}

#[test]
fn the_image_runs_the_config_of_the_configmap_as_the_user_the_pod_runs_as() {
    let pod = Pod::load();
    assert_eq!(
        pod.config_source,
        Path::new(BASE).join("stickyd.toml"),
        "the image's --config is the ConfigMap made from stickyd.toml"
    );
    let c = pod.container();
    assert!(
        c["command"].is_null() && c["args"].is_null(),
        "the container runs the image's entrypoint as it is"
    );
    let user = image("USER");
    let uid: u64 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER");
    let security = &pod_spec(&pod.deployment)["securityContext"];
    assert_eq!(security["runAsUser"].as_u64(), Some(uid), "USER {user}");
    assert_ne!(uid, 0, "not root");
    let exposed: BTreeSet<u16> = image("EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    let ports: BTreeSet<u16> = items(&c["ports"])
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap() as u16)
        .collect();
    assert_eq!(exposed, ports, "the image exposes the container's ports");
    // The kustomization tags the image with this version.
    let k = kustomization();
    let image = items(&k["images"])
        .iter()
        .find(|i| i["name"] == c["image"])
        .expect("kustomization.yaml names the container's image");
    assert_eq!(text(&image["newTag"], "newTag"), env!("CARGO_PKG_VERSION"));
}

#[test]
fn the_config_reads_its_keys_and_admin_token_from_the_generated_secret() {
    let pod = Pod::load();
    let dir = pod.config_path.parent().unwrap().to_path_buf();
    let specs = pod.toml["affinity"]["keys"]
        .as_array()
        .expect("[affinity] keys");
    let keys = key_files(&specs.iter().collect::<Vec<_>>(), &dir);
    assert!(
        keys.len() >= 2,
        "a key that signs and one that verifies, for rotation"
    );
    let token = key_files(&[&pod.toml["admin"]["token"]], &dir);
    let generated = generator("secretGenerator", "stickyd-keys");
    let mut used = BTreeSet::new();
    for path in keys.iter().chain(&token) {
        let source = pod
            .files
            .0
            .get(path)
            .unwrap_or_else(|| panic!("{} is a file of the pod's volumes", path.display()));
        assert_eq!(
            (source.kind, source.name.as_str()),
            ("Secret", "stickyd-keys"),
            "{}",
            path.display()
        );
        assert!(
            generated.contains_key(&source.key),
            "the Secret's generator makes the key {}",
            source.key
        );
        used.insert(source.key.clone());
    }
    assert_eq!(
        used,
        generated.keys().cloned().collect(),
        "every key of the Secret is used"
    );
    // Parsed by stickyd with those files: `current` signs, `previous` verifies.
    let config = pod.config();
    assert_eq!(
        config
            .affinity
            .secrets
            .iter()
            .map(|s| &s.0)
            .collect::<Vec<_>>(),
        [&test_secret("current"), &test_secret("previous")]
    );
    assert!(!config.affinity.generated_key);
    let admin = config.admin.expect("[admin]");
    assert_eq!(admin.token.map(|t| t.0), Some(test_secret("admin-token")));
}

#[test]
fn the_probes_ask_the_admin_listener_for_healthz_and_readyz_where_the_kubelet_reaches_it() {
    let pod = Pod::load();
    let config = pod.config();
    let admin = config.admin.expect("an [admin] listener");
    // The kubelet connects to the pod's IP: the listener must take every address.
    assert!(
        admin.listen.ip().is_unspecified(),
        "admin.listen {} takes the pod IP",
        admin.listen
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &pod.container()[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            pod.container_port(&get["port"]),
            admin.listen.port(),
            "{probe} is on the admin port"
        );
        assert_eq!(get["scheme"].as_str().unwrap_or("HTTP"), "HTTP", "{probe}");
        // The Host the kubelet sends is the pod IP with the port, which the admin API's host
        // rule takes as this listener; a Host header of another name would be refused (421).
        assert!(
            get["host"].is_null() && get["httpHeaders"].is_null(),
            "{probe}"
        );
    }
}

#[test]
fn client_traffic_goes_from_the_load_balancer_to_the_listen_port() {
    let pod = Pod::load();
    let config = pod.config();
    let service = object("service.yaml");
    assert_eq!(service["spec"]["type"].as_str(), Some("LoadBalancer"));
    let ports = items(&service["spec"]["ports"]);
    assert_eq!(
        ports.len(),
        1,
        "only client traffic is exposed, never the admin API"
    );
    let target = pod.container_port(&ports[0]["targetPort"]);
    assert!(
        config
            .server
            .listen
            .iter()
            .any(|a| a.port() == target && a.ip().is_unspecified()),
        "the Service's targetPort {target} is a [server] listen port on every address: {:?}",
        config.server.listen
    );
    assert_ne!(
        config.admin.unwrap().listen.port(),
        target,
        "the admin API is not behind the load balancer"
    );
    // The client's address reaches stickyd: kept by the Service, or sent in PROXY headers.
    let local = service["spec"]["externalTrafficPolicy"].as_str() == Some("Local");
    assert!(
        local || config.server.proxy_protocol,
        "externalTrafficPolicy: Local, or [server] proxy_protocol"
    );
}

#[test]
fn the_pod_outlives_its_shutdown_delay_and_grace_and_reloads_the_config_in_place() {
    let pod = Pod::load();
    let config = pod.config();
    let (delay, grace) = (config.server.shutdown_delay, config.server.shutdown_grace);
    assert!(
        delay > Duration::ZERO,
        "a shutdown delay, while the platform stops sending"
    );
    let period = pod_spec(&pod.deployment)["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(period) > delay + grace,
        "terminationGracePeriodSeconds {period} > shutdown_delay {delay:?} + shutdown_grace {grace:?}"
    );
    // Generated names without a hash are changed in place: only watch_config applies them.
    let k = kustomization();
    if k["generatorOptions"]["disableNameSuffixHash"].as_bool() == Some(true) {
        assert!(
            config.server.watch_config,
            "watch_config with in-place ConfigMap updates"
        );
        // And the config and the keys share one volume, so a new Secret swaps the config's
        // files too and the reload reads the new keys.
        let volumes = items(&pod_spec(&pod.deployment)["volumes"]);
        assert_eq!(volumes.len(), 1, "one projected volume");
        assert!(volumes[0]["projected"].is_mapping());
    }
}

#[test]
fn the_service_the_budget_and_the_spread_select_the_deployments_pods() {
    let pod = Pod::load();
    let (selector, pod_labels) = (pod.selector(), pod.labels());
    assert!(selector.contains_key(NAME_LABEL) && selector.contains_key(INSTANCE_LABEL));
    assert!(
        is_subset(&selector, &pod_labels),
        "the Deployment selects its pods"
    );
    let service = object("service.yaml");
    assert_eq!(labels(&service["spec"]["selector"]), selector, "Service");
    let pdb = object("poddisruptionbudget.yaml");
    assert_eq!(
        labels(&pdb["spec"]["selector"]["matchLabels"]),
        selector,
        "PodDisruptionBudget"
    );
    let replicas = pod.deployment["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(replicas, 3);
    // One pod at a time may go, and some always stay.
    let spec = &pdb["spec"];
    let may_go = match (
        spec["maxUnavailable"].as_u64(),
        spec["minAvailable"].as_u64(),
    ) {
        (Some(n), None) => n,
        (None, Some(n)) => replicas - n,
        other => panic!("maxUnavailable or minAvailable as a number: {other:?}"),
    };
    assert!(may_go >= 1 && may_go < replicas, "{may_go} of {replicas}");
    let spread = items(&pod_spec(&pod.deployment)["topologySpreadConstraints"]);
    let keys: BTreeSet<&str> = spread
        .iter()
        .map(|c| {
            assert_eq!(
                labels(&c["labelSelector"]["matchLabels"]),
                selector,
                "spread constraints count the Deployment's pods"
            );
            text(&c["topologyKey"], "topologyKey")
        })
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["kubernetes.io/hostname", "topology.kubernetes.io/zone"])
    );
}

#[test]
fn the_pod_runs_restricted() {
    let pod = Pod::load();
    let spec = pod_spec(&pod.deployment);
    let p = &spec["securityContext"];
    assert_eq!(p["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(p["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    let c = &pod.container()["securityContext"];
    assert_eq!(c["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(c["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_ne!(c["privileged"].as_bool(), Some(true));
    assert_eq!(c["capabilities"]["drop"], Value::from(vec!["ALL"]));
    assert!(c["capabilities"]["add"].is_null(), "no capability added");
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(spec[host].as_bool(), Some(true), "{host}");
    }
    // No API token: stickyd never calls the Kubernetes API.
    assert_eq!(spec["automountServiceAccountToken"].as_bool(), Some(false));
    let account = object("serviceaccount.yaml");
    assert_eq!(spec["serviceAccountName"], account["metadata"]["name"]);
    assert_eq!(
        account["automountServiceAccountToken"].as_bool(),
        Some(false)
    );
    let resources = &pod.container()["resources"];
    for (what, key) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(resources[what][key].is_string(), "resources.{what}.{key}");
    }
    // The key files are not for everyone: owner and the pod's group only.
    let mode = spec["volumes"][0]["projected"]["defaultMode"]
        .as_u64()
        .expect("defaultMode");
    assert_eq!(mode & 0o007, 0, "mode {mode:o}: no access for others");
}

#[test]
fn discovery_asks_for_the_example_apps_headless_service() {
    let pod = Pod::load();
    let discover = pod.toml["discover"].as_array().expect("[[discover]]");
    assert_eq!(discover.len(), 1);
    let dns = discover[0]["dns"].as_str().expect("discover.dns");
    let (host, port) = dns.rsplit_once(':').expect("dns = \"NAME:PORT\"");
    let parts: Vec<&str> = host.split('.').collect();
    assert_eq!(
        parts[2..],
        ["svc", "cluster", "local"],
        "{host}: a Service's cluster DNS name"
    );
    // Ids from addresses: every replica names each app pod alike.
    assert_eq!(discover[0]["id"].as_str(), Some("address"));
    let app = object("example-app/service.yaml");
    assert_eq!(app["metadata"]["name"].as_str(), Some(parts[0]));
    assert_eq!(app["metadata"]["namespace"].as_str(), Some(parts[1]));
    assert_eq!(app["spec"]["clusterIP"].as_str(), Some("None"), "headless");
    assert_ne!(
        app["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    let port: u64 = port.parse().unwrap();
    assert!(
        items(&app["spec"]["ports"])
            .iter()
            .any(|p| p["port"].as_u64() == Some(port)),
        "the app's Service has port {port}"
    );
}

/// One request as the kubelet's HTTP prober sends it (Go's client, keep-alives off): `Host` is
/// the pod IP and port it connects to, and no token.
async fn kubelet_get(to: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {to}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut resp))
        .await
        .expect("an answer")
        .unwrap();
    resp
}

#[tokio::test]
async fn the_deployments_probes_are_answered_200_when_the_kubelet_asks_and_503_once_stopping() {
    let pod = Pod::load();
    let app = support::TestBackend::start("app").await;
    // 127.0.0.2 stands for the pod IP (a test binds no wildcard address): the kubelet's Host,
    // the address it connects to with the port, is then what it is in the pod.
    let config = pod.config_with(app.addr, |t| {
        let server = t["server"].as_table_mut().unwrap();
        server.insert("listen".into(), vec!["127.0.0.2:0"].into());
        let admin = t["admin"].as_table_mut().unwrap();
        admin.insert("listen".into(), "127.0.0.2:0".into());
    });
    assert!(
        config.admin.as_ref().unwrap().token.is_some(),
        "with the token"
    );
    let lb = stickyd::server::start(config).await.unwrap();
    let admin = lb.admin_addr().unwrap();
    let status = |resp: &str| resp.split(' ').nth(1).map(str::to_string);
    let probes: Vec<&str> = ["livenessProbe", "readinessProbe"]
        .iter()
        .map(|p| text(&pod.container()[*p]["httpGet"]["path"], "a probe's path"))
        .collect();
    for path in &probes {
        let resp = kubelet_get(admin, path).await;
        assert_eq!(status(&resp).as_deref(), Some("200"), "{path}: {resp}");
    }
    // Anything else needs the token the pod has.
    let resp = kubelet_get(admin, "/backends").await;
    assert_eq!(status(&resp).as_deref(), Some("401"), "{resp}");
    // SIGTERM's first step: unready, alive.
    lb.not_ready();
    let ready = kubelet_get(admin, probes[1]).await;
    assert_eq!(status(&ready).as_deref(), Some("503"), "{ready}");
    let alive = kubelet_get(admin, probes[0]).await;
    assert_eq!(status(&alive).as_deref(), Some("200"), "{alive}");
}

#[test]
fn the_pods_config_validates_as_shipped() {
    let pod = Pod::load();
    let text = read(&pod.config_source);
    let config = pod.parse(&text);
    assert!(config.admin.is_some());
    assert_eq!(config.affinity.secrets.len(), 2);
    assert!(config.backends.is_empty(), "every backend is discovered");
    let d = &config.pools[0].discover[0];
    assert_eq!(d.id, stickyd::config::DiscoverId::Address);
    assert!(
        matches!(&d.lookup, stickyd::config::Lookup::Dns { host, .. } if host.ends_with(".svc.cluster.local")),
        "{:?}",
        d.lookup
    );
}
