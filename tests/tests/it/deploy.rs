//! `deploy/` checked against the code, since no container engine runs here: every file is parsed
//! with a real parser (TOML, YAML, JSON) and whatever it names must exist in the code: binaries,
//! ports, environment variables, config keys, probe paths, queues, Secret keys. Renaming a route,
//! an override variable, a config key or a binary fails one of these tests.
//!
//! "An environment variable the code reads" is decided by the code itself: each deployment's
//! config file is loaded with `Config::from_toml` through an environment that records every name
//! the loader asks for (the URL/listen overrides and the `env:` secrets), plus `CONFIG_ENV`, which
//! `Config::load` reads.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::Value as Yaml;
use shared::Flow;
use shared::bus::topology::Names;
use shared::config::{BROKER_URL_ENV, CONFIG_ENV, Config, LISTEN_ENV, REDIS_URL_ENV};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn s(v: &Yaml) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

fn list(v: &Yaml) -> &[Yaml] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

/// The binaries the workspace builds: each member's `[[bin]]` names (or the package name when it
/// has only `src/main.rs`).
fn workspace_binaries() -> BTreeSet<String> {
    let root: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let members = root["workspace"]["members"].as_array().unwrap();
    let mut bins = BTreeSet::new();
    for m in members {
        let m = m.as_str().unwrap();
        let manifest: toml::Table = toml::from_str(&read(&format!("{m}/Cargo.toml"))).unwrap();
        match manifest.get("bin").and_then(|b| b.as_array()) {
            Some(explicit) => {
                for b in explicit {
                    bins.insert(b["name"].as_str().unwrap().to_string());
                }
            }
            None if repo().join(m).join("src/main.rs").exists() => {
                bins.insert(manifest["package"]["name"].as_str().unwrap().to_string());
            }
            None => {}
        }
    }
    bins
}

/// The listen port the code uses when the config says nothing.
fn default_listen_port() -> u16 {
    let c = Config::from_toml("", &|_| None).expect("an empty config is valid");
    port_of(&c.ingress.listen)
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<std::net::SocketAddr>()
        .unwrap_or_else(|e| panic!("'{addr}' is not an address: {e}"))
        .port()
}

/// Load `toml` as a deployment would, with exactly the variables `env` provides. Returns the
/// config and every variable name the loader asked for.
fn load_with(what: &str, toml: &str, env: &BTreeMap<String, String>) -> (Config, BTreeSet<String>) {
    let asked = RefCell::new(BTreeSet::new());
    let config = Config::from_toml(toml, &|name| {
        asked.borrow_mut().insert(name.to_string());
        env.get(name).cloned()
    })
    .unwrap_or_else(|e| {
        panic!("{what}: the config does not load with the environment it is given: {e}")
    });
    (config, asked.into_inner())
}

/// Every variable a deployment sets must be one the code reads, and the overrides it sets must
/// take effect.
fn check_env(
    what: &str,
    config: &Config,
    asked: &BTreeSet<String>,
    env: &BTreeMap<String, String>,
) {
    for name in env.keys() {
        assert!(
            name == CONFIG_ENV || asked.contains(name),
            "{what}: sets {name}, which the code never reads (it reads {CONFIG_ENV} and {asked:?})"
        );
    }
    if let Some(url) = env.get(BROKER_URL_ENV) {
        assert_eq!(
            &config.broker.url, url,
            "{what}: {BROKER_URL_ENV} overrides broker.url"
        );
    }
    if let Some(url) = env.get(REDIS_URL_ENV) {
        assert_eq!(
            &config.redis.url, url,
            "{what}: {REDIS_URL_ENV} overrides redis.url"
        );
    }
    if let Some(listen) = env.get(LISTEN_ENV) {
        assert_eq!(
            &config.ingress.listen, listen,
            "{what}: {LISTEN_ENV} overrides ingress.listen"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

/// Instructions of a Dockerfile: (KEYWORD, arguments), continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(cont) = t.strip_suffix('\\') {
            current.push_str(cont);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (kw, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((kw.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

/// The image's `ENV` defaults.
fn dockerfile_env() -> BTreeMap<String, String> {
    dockerfile()
        .into_iter()
        .filter(|(k, _)| k == "ENV")
        .map(|(_, rest)| {
            let (k, v) = rest.split_once('=').expect("ENV NAME=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn numeric_user() -> u32 {
    let (_, user) = dockerfile()
        .into_iter()
        .rfind(|(k, _)| k == "USER")
        .expect("the runtime stage sets USER");
    user.split(':')
        .next()
        .unwrap()
        .parse()
        .expect("USER is numeric, so runAsNonRoot can verify it")
}

#[test]
fn the_dockerfile_builds_and_ships_binaries_that_exist() {
    let bins = workspace_binaries();
    let ins = dockerfile();
    let froms: Vec<&String> = ins
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, r)| r)
        .collect();
    assert!(
        froms.len() >= 2,
        "multi-stage: a build stage and a runtime stage"
    );
    // The builder's toolchain is at least the workspace's rust-version.
    let root: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let msrv = root["workspace"]["package"]["rust-version"]
        .as_str()
        .unwrap();
    let version = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap()).collect() };
    let builder = froms[0]
        .strip_prefix("rust:")
        .expect("the build stage is the official rust image");
    let tag = builder.split(['-', ' ']).next().unwrap();
    assert!(
        version(tag) >= version(msrv),
        "rust:{tag} is older than rust-version {msrv}"
    );
    assert!(
        !froms.last().unwrap().starts_with("rust:"),
        "the runtime image is not the toolchain"
    );

    let mut built = BTreeSet::new();
    for (_, run) in ins.iter().filter(|(k, _)| k == "RUN") {
        let words: Vec<&str> = run.split_whitespace().collect();
        for w in words.windows(2).filter(|w| w[0] == "--bin") {
            built.insert(w[1].to_string());
        }
    }
    assert!(
        !built.is_empty(),
        "cargo build --bin NAME in the build stage"
    );
    for b in &built {
        assert!(
            bins.contains(b),
            "Dockerfile builds `{b}`, not a workspace binary ({bins:?})"
        );
    }
    let mut shipped = BTreeSet::new();
    for (_, copy) in ins.iter().filter(|(k, _)| k == "COPY") {
        if copy.starts_with("--from=") {
            let parts: Vec<&str> = copy.split_whitespace().collect();
            let src = parts[1];
            shipped.insert(src.rsplit('/').next().unwrap().to_string());
        }
    }
    assert_eq!(
        shipped, built,
        "every binary built is copied into the runtime image"
    );
    let (_, cmd) = ins.iter().rfind(|(k, _)| k == "CMD").expect("a CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    assert!(bins.contains(&cmd[0]), "CMD runs `{}`", cmd[0]);

    let (_, expose) = ins.iter().find(|(k, _)| k == "EXPOSE").expect("EXPOSE");
    assert_eq!(
        expose.parse::<u16>().unwrap(),
        default_listen_port(),
        "EXPOSE is the ingress's default listen port"
    );
    for name in dockerfile_env().keys() {
        assert_eq!(
            name, CONFIG_ENV,
            "the image sets only the config path variable"
        );
    }
    assert_ne!(numeric_user(), 0, "the runtime user is not root");
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ and Redis settings
// ---------------------------------------------------------------------------------------------

fn definitions() -> serde_json::Value {
    serde_json::from_str(&read("deploy/rabbitmq/definitions.json")).expect("definitions are JSON")
}

/// `key value` lines of redis.conf / `key = value` lines of rabbitmq.conf.
fn conf(rel: &str, sep: &str) -> BTreeMap<String, String> {
    read(rel)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once(sep).unwrap_or_else(|| panic!("{rel}: '{l}'"));
            (k.trim().to_string(), v.trim().trim_matches('"').to_string())
        })
        .collect()
}

#[test]
fn rabbitmq_definitions_leave_the_topology_to_the_code() {
    let defs = definitions();
    // A queue or exchange declared here with other arguments than topology.rs declares makes the
    // binaries' declare fail with PRECONDITION_FAILED; policies would override them silently.
    for key in ["queues", "exchanges", "bindings", "policies"] {
        assert!(
            defs[key].as_array().is_none_or(Vec::is_empty),
            "definitions.json must not define {key}: the binaries declare the topology"
        );
    }
    let conf = conf("deploy/rabbitmq/rabbitmq.conf", "=");
    assert_eq!(conf["load_definitions"], "/etc/rabbitmq/definitions.json");
}

/// The user in `url` exists with permissions on the URL's vhost; if the password is in the
/// definitions (as a salted SHA-256), it is the URL's.
fn broker_url_matches_definitions(what: &str, url: &str, check_password: bool) {
    let u = url::Url::parse(url).unwrap();
    let vhost = percent_decode(u.path().trim_start_matches('/'));
    let defs = definitions();
    assert!(
        defs["vhosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == vhost.as_str()),
        "{what}: vhost '{vhost}' is not in definitions.json"
    );
    assert!(
        defs["permissions"].as_array().unwrap().iter().any(|p| {
            p["user"] == u.username() && p["vhost"] == vhost.as_str() && p["configure"] == ".*"
        }),
        "{what}: user '{}' has no permissions on '{vhost}' (the binaries declare queues: configure)",
        u.username()
    );
    if check_password {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        let user = defs["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == u.username())
            .unwrap_or_else(|| panic!("{what}: user '{}' is not defined", u.username()));
        assert_eq!(user["hashing_algorithm"], "rabbit_password_hashing_sha256");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(user["password_hash"].as_str().unwrap())
            .unwrap();
        let (salt, hash) = raw.split_at(4);
        let mut h = Sha256::new();
        h.update(salt);
        h.update(percent_decode(u.password().unwrap_or("")).as_bytes());
        assert_eq!(
            hash,
            h.finalize().as_slice(),
            "{what}: the URL's password is not the defined one"
        );
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[test]
fn redis_runs_with_aof_and_noeviction() {
    let c = conf("deploy/redis/redis.conf", " ");
    assert_eq!(
        c["appendonly"], "yes",
        "OAuth refresh tokens must survive a restart"
    );
    assert_eq!(c["appendfsync"], "everysec");
    assert_eq!(
        c["maxmemory-policy"], "noeviction",
        "idempotency keys and tokens are never evicted"
    );
}

// ---------------------------------------------------------------------------------------------
// Compose
// ---------------------------------------------------------------------------------------------

/// The environment of a compose service, `${NAME:?..}` interpolations replaced by a value long
/// enough for any secret check.
fn compose_env(service: &Yaml) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(m) = service["environment"].as_mapping() {
        for (k, v) in m {
            let v = s(v);
            let v = if v.starts_with("${") {
                format!("interpolated-{}-padded-to-more-than-32-characters", s(k))
            } else {
                v.to_string()
            };
            env.insert(s(k).to_string(), v);
        }
    }
    env
}

/// `host:container[:mode]` volume entries of a service as (host, container).
fn compose_volumes(service: &Yaml) -> Vec<(String, String)> {
    list(&service["volumes"])
        .iter()
        .map(|v| {
            let parts: Vec<&str> = s(v).split(':').collect();
            (parts[0].to_string(), parts[1].to_string())
        })
        .collect()
}

#[test]
fn the_compose_file_runs_what_the_code_builds_with_a_config_that_loads() {
    let docs = yaml_docs("deploy/compose.yaml");
    let compose = &docs[0];
    let services = compose["services"].as_mapping().expect("services");
    let bins = workspace_binaries();
    let image_env = dockerfile_env();
    let mut ran = BTreeSet::new();
    for name in ["rabbitmq", "redis", "ingress", "worker"] {
        assert!(services.contains_key(name), "compose starts {name}");
    }
    for (name, svc) in services {
        let name = s(name);
        let Some(cmd) = svc["command"].as_sequence() else {
            continue;
        };
        let program = s(&cmd[0]);
        if !bins.contains(program) {
            continue; // rabbitmq, redis
        }
        ran.insert(program.to_string());
        let env = compose_env(svc);
        let config_path = env
            .get(CONFIG_ENV)
            .or(image_env.get(CONFIG_ENV))
            .unwrap_or_else(|| panic!("{name}: {CONFIG_ENV} names the config file"));
        let (host_file, _) = compose_volumes(svc)
            .into_iter()
            .find(|(_, target)| target == config_path)
            .unwrap_or_else(|| panic!("{name}: nothing is mounted at {config_path}"));
        let toml = read(&format!("deploy/{}", host_file.trim_start_matches("./")));
        let what = format!("compose service {name}");
        let (config, asked) = load_with(&what, &toml, &env);
        check_env(&what, &config, &asked, &env);

        // The URLs point at the compose services, with the definitions' user and vhost.
        let broker = url::Url::parse(&config.broker.url).unwrap();
        assert!(
            services.contains_key(broker.host_str().unwrap()),
            "{what}: broker host"
        );
        broker_url_matches_definitions(&what, &config.broker.url, true);
        let redis = url::Url::parse(&config.redis.url).unwrap();
        assert!(
            services.contains_key(redis.host_str().unwrap()),
            "{what}: redis host"
        );
        let redis_conf = conf("deploy/redis/redis.conf", " ");
        assert_eq!(redis.port().unwrap_or(6379).to_string(), redis_conf["port"]);

        if program == "ingress" {
            let port = port_of(&config.ingress.listen);
            let admin = port_of(&config.ingress.admin_listen);
            let published: Vec<(String, u16)> = list(&svc["ports"])
                .iter()
                .map(|p| {
                    let p = s(p);
                    let (host, port) = p.rsplit_once(':').unwrap();
                    (host.to_string(), port.parse().unwrap())
                })
                .collect();
            assert!(
                published.iter().any(|(_, p)| *p == port),
                "{what}: publishes the port it listens on: {published:?}"
            );
            for (host, p) in &published {
                assert!(
                    *p == port || (*p == admin && host.starts_with("127.0.0.1")),
                    "{what}: the admin port is published on loopback only: {published:?}"
                );
            }
        } else {
            let replicas = svc["deploy"]["replicas"].as_u64().unwrap_or(1);
            assert!(replicas >= 2, "{what}: several workers share the queues");
        }
        // The stop grace is longer than the in-process drain, or in-flight work is cut short.
        let grace = s(&svc["stop_grace_period"])
            .trim_end_matches('s')
            .parse::<u64>()
            .unwrap();
        assert!(
            grace > config.worker.shutdown_grace.as_secs(),
            "{what}: stop_grace_period"
        );
    }
    assert_eq!(
        ran,
        bins_run_in_production(&bins),
        "compose runs the ingress and the worker"
    );

    // RabbitMQ and Redis get the files with the production settings.
    let rabbit = compose_volumes(&services["rabbitmq"]);
    let conf_target = rabbit
        .iter()
        .find(|(h, _)| h.ends_with("rabbitmq.conf"))
        .expect("rabbitmq.conf mounted");
    assert_eq!(conf_target.1, "/etc/rabbitmq/rabbitmq.conf");
    let defs_target = rabbit
        .iter()
        .find(|(h, _)| h.ends_with("definitions.json"))
        .expect("definitions.json mounted");
    assert_eq!(
        conf("deploy/rabbitmq/rabbitmq.conf", "=")["load_definitions"],
        defs_target.1,
        "rabbitmq.conf loads the mounted definitions"
    );
    let redis_svc = &services["redis"];
    let redis_conf_target = compose_volumes(redis_svc)
        .into_iter()
        .find(|(h, _)| h.ends_with("redis.conf"))
        .expect("redis.conf mounted")
        .1;
    let cmd: Vec<&str> = list(&redis_svc["command"]).iter().map(s).collect();
    assert_eq!(
        cmd,
        vec!["redis-server", redis_conf_target.as_str()],
        "redis uses the mounted config"
    );
}

/// The binaries the image ships, which the deployments must run (each of them).
fn bins_run_in_production(bins: &BTreeSet<String>) -> BTreeSet<String> {
    let shipped: BTreeSet<String> = dockerfile()
        .into_iter()
        .filter(|(k, r)| k == "COPY" && r.starts_with("--from="))
        .map(|(_, r)| {
            r.split_whitespace()
                .nth(1)
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(shipped.is_subset(bins));
    shipped
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

struct K8s {
    docs: Vec<(String, Yaml)>,
}

impl K8s {
    fn load() -> K8s {
        let mut docs = Vec::new();
        let dir = repo().join("deploy/k8s");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        for f in files {
            let rel = f
                .strip_prefix(repo())
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            for d in yaml_docs(&rel) {
                assert!(d["kind"].is_string(), "{rel}: every document has a kind");
                docs.push((rel.clone(), d));
            }
        }
        K8s { docs }
    }
    fn of_kind(&self, kind: &str) -> Vec<&Yaml> {
        self.docs
            .iter()
            .filter(|(_, d)| d["kind"] == kind)
            .map(|(_, d)| d)
            .collect()
    }
    fn named(&self, kind: &str, name: &str) -> &Yaml {
        self.of_kind(kind)
            .into_iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/k8s"))
    }
    fn secret_data(&self, name: &str) -> BTreeMap<String, String> {
        let secret = self.named("Secret", name);
        secret["stringData"]
            .as_mapping()
            .expect("the example Secret uses stringData")
            .iter()
            .map(|(k, v)| (s(k).to_string(), s(v).to_string()))
            .collect()
    }
}

/// Labels `selector` matches (all of them) in `labels`.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    let sel = selector.as_mapping().expect("matchLabels");
    !sel.is_empty() && sel.iter().all(|(k, v)| &labels[s(k)] == v)
}

#[test]
fn kubernetes_manifests_name_only_what_exists() {
    let k = K8s::load();
    let bins = workspace_binaries();
    let image_env = dockerfile_env();
    let deployments = k.of_kind("Deployment");
    let mut ran = BTreeSet::new();
    let mut secret_keys_used = BTreeSet::new();
    let mut probe_paths = BTreeSet::new();
    let mut scrape_paths = BTreeSet::new();

    for d in &deployments {
        let dname = s(&d["metadata"]["name"]);
        let pod = &d["spec"]["template"];
        assert!(
            selects(
                &d["spec"]["selector"]["matchLabels"],
                &pod["metadata"]["labels"]
            ),
            "{dname}: selector matches its pods"
        );
        let ctx = &pod["spec"]["securityContext"];
        assert_eq!(
            ctx["runAsNonRoot"],
            Yaml::Bool(true),
            "{dname}: runAsNonRoot"
        );
        assert_eq!(
            ctx["runAsUser"].as_u64(),
            Some(numeric_user() as u64),
            "{dname}: the image's uid"
        );
        let volumes = list(&pod["spec"]["volumes"]);
        for c in list(&pod["spec"]["containers"]) {
            let what = format!("{dname}/{}", s(&c["name"]));
            let program = s(&list(&c["command"])[0]);
            assert!(
                bins.contains(program),
                "{what}: runs `{program}`, not a workspace binary"
            );
            ran.insert(program.to_string());
            for r in ["requests", "limits"] {
                for q in ["cpu", "memory"] {
                    assert!(!c["resources"][r][q].is_null(), "{what}: resources.{r}.{q}");
                }
            }

            // The environment, with secret values from the example Secret.
            let mut env = BTreeMap::new();
            for e in list(&c["env"]) {
                let name = s(&e["name"]).to_string();
                let value = if let Some(v) = e["value"].as_str() {
                    v.to_string()
                } else {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    let (sname, key) = (s(&r["name"]), s(&r["key"]));
                    secret_keys_used.insert((sname.to_string(), key.to_string()));
                    k.secret_data(sname)
                        .get(key)
                        .cloned()
                        .unwrap_or_else(|| panic!("{what}: Secret {sname} has no key {key}"))
                };
                env.insert(name, value);
            }

            // The config file: the ConfigMap item mounted where CONFIG_ENV points.
            let config_path = env
                .get(CONFIG_ENV)
                .or(image_env.get(CONFIG_ENV))
                .unwrap_or_else(|| panic!("{what}: {CONFIG_ENV} names the config file"))
                .clone();
            let mut toml = None;
            for m in list(&c["volumeMounts"]) {
                let vol = volumes
                    .iter()
                    .find(|v| v["name"] == m["name"])
                    .unwrap_or_else(|| panic!("{what}: mounts an undeclared volume"));
                let cm = &vol["configMap"];
                for item in list(&cm["items"]) {
                    let path = format!(
                        "{}/{}",
                        s(&m["mountPath"]).trim_end_matches('/'),
                        s(&item["path"])
                    );
                    if path == config_path {
                        let map = k.named("ConfigMap", s(&cm["name"]));
                        toml = Some(
                            map["data"][s(&item["key"])]
                                .as_str()
                                .unwrap_or_else(|| {
                                    panic!("{what}: ConfigMap has no key {}", s(&item["key"]))
                                })
                                .to_string(),
                        );
                    }
                }
            }
            let toml =
                toml.unwrap_or_else(|| panic!("{what}: nothing is mounted at {config_path}"));
            let (config, asked) = load_with(&what, &toml, &env);
            check_env(&what, &config, &asked, &env);
            broker_url_matches_definitions(&what, &config.broker.url, false);

            let ports = list(&c["ports"]);
            if program == "ingress" {
                let listen = port_of(&config.ingress.listen);
                let admin = port_of(&config.ingress.admin_listen);
                assert_eq!(
                    ports.len(),
                    2,
                    "{what}: the webhook port and the admin port"
                );
                let named = |port: u16| {
                    ports
                        .iter()
                        .find(|p| p["containerPort"].as_u64() == Some(port as u64))
                        .map(|p| s(&p["name"]).to_string())
                        .unwrap_or_else(|| panic!("{what}: no containerPort {port}"))
                };
                let port_name = named(listen);
                let admin_name = named(admin);
                for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                    let get = &c[probe]["httpGet"];
                    if get.is_null() {
                        continue;
                    }
                    assert_eq!(s(&get["port"]), port_name, "{what}: {probe} port");
                    probe_paths.insert(s(&get["path"]).to_string());
                }
                assert!(probe_paths.contains("/healthz") && probe_paths.contains("/readyz"));
                let ann = &pod["metadata"]["annotations"];
                if let Some(path) = ann["prometheus.io/path"].as_str() {
                    scrape_paths.insert(path.to_string());
                    assert_eq!(
                        s(&ann["prometheus.io/port"]),
                        admin.to_string(),
                        "{what}: metrics are scraped on the admin port"
                    );
                }
                // The Service reaches this port.
                let svc = k
                    .of_kind("Service")
                    .into_iter()
                    .find(|svc| selects(&svc["spec"]["selector"], &pod["metadata"]["labels"]))
                    .unwrap_or_else(|| panic!("{what}: no Service selects it"));
                for p in list(&svc["spec"]["ports"]) {
                    let target = &p["targetPort"];
                    assert!(
                        target.as_str() == Some(port_name.as_str())
                            || target.as_u64() == Some(listen as u64),
                        "{what}: Service targetPort {target:?}"
                    );
                    assert!(
                        target.as_str() != Some(admin_name.as_str())
                            && target.as_u64() != Some(admin as u64),
                        "{what}: the Service never publishes the admin port"
                    );
                }
            } else {
                assert!(ports.is_empty(), "{what}: the worker serves no port");
            }
            let grace = pod["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30);
            assert!(
                grace > config.worker.shutdown_grace.as_secs(),
                "{what}: terminationGracePeriodSeconds"
            );
        }
        // A PodDisruptionBudget covers every Deployment.
        assert!(
            k.of_kind("PodDisruptionBudget").iter().any(|p| selects(
                &p["spec"]["selector"]["matchLabels"],
                &pod["metadata"]["labels"]
            )),
            "{dname}: no PodDisruptionBudget"
        );
    }
    assert_eq!(
        ran,
        bins_run_in_production(&bins),
        "a Deployment for each binary"
    );

    // KEDA scales the worker Deployment on queues the code declares.
    let worker = deployments
        .iter()
        .find(|d| {
            list(&d["spec"]["template"]["spec"]["containers"])
                .iter()
                .any(|c| list(&c["command"])[0] == "worker")
        })
        .unwrap();
    assert!(
        worker["spec"]["replicas"].is_null(),
        "the autoscaler owns the worker replica count"
    );
    let scaled = k.of_kind("ScaledObject");
    assert_eq!(scaled.len(), 1);
    let so = scaled[0];
    assert_eq!(
        so["spec"]["scaleTargetRef"]["name"],
        worker["metadata"]["name"]
    );
    assert!(
        so["spec"]["minReplicaCount"].as_u64().unwrap() >= 1,
        "the scheduler runs in the workers"
    );
    let cm = k.of_kind("ConfigMap")[0];
    // The overrides stay unset so the file's own settings are read; every secret it names is
    // answered. A ConfigMap that does not load fails here rather than reading as "no prefix".
    let overrides = [BROKER_URL_ENV, REDIS_URL_ENV, LISTEN_ENV, CONFIG_ENV];
    let prefix_cfg = Config::from_toml(s(&cm["data"]["config.toml"]), &|n| {
        (!overrides.contains(&n)).then(|| format!("{n}-padded-to-more-than-32-characters-x"))
    })
    .expect("the ConfigMap's config.toml loads")
    .broker
    .prefix;
    let names = Names::new(&prefix_cfg);
    let queues: BTreeSet<String> = Flow::ALL.iter().map(|f| names.flow_queue(*f)).collect();
    let mut scaled_on = BTreeSet::new();
    for t in list(&so["spec"]["triggers"]) {
        assert_eq!(t["type"], "rabbitmq");
        let q = s(&t["metadata"]["queueName"]);
        assert!(
            queues.contains(q),
            "KEDA watches '{q}', not a queue the code declares ({queues:?})"
        );
        scaled_on.insert(q.to_string());
        let auth = k.named("TriggerAuthentication", s(&t["authenticationRef"]["name"]));
        for r in list(&auth["spec"]["secretTargetRef"]) {
            let (sname, key) = (s(&r["name"]), s(&r["key"]));
            let data = k.secret_data(sname);
            let host = data
                .get(key)
                .unwrap_or_else(|| panic!("KEDA: Secret {sname} has no key {key}"));
            secret_keys_used.insert((sname.to_string(), key.to_string()));
            if s(&r["parameter"]) == "host" {
                broker_url_matches_definitions("KEDA", host, false);
            }
        }
    }
    for flow in [Flow::Invoices, Flow::Payments] {
        assert!(
            scaled_on.contains(&names.flow_queue(flow)),
            "KEDA watches the {flow} queue"
        );
    }

    // No dead keys in the Secret: each is used by a Deployment or KEDA.
    for secret in k.of_kind("Secret") {
        let sname = s(&secret["metadata"]["name"]);
        for key in k.secret_data(sname).keys() {
            assert!(
                secret_keys_used.contains(&(sname.to_string(), key.clone())),
                "Secret {sname} key {key} is used by nothing"
            );
        }
    }

    assert_probe_paths_are_served(probe_paths, scrape_paths);
}

/// Ask the real router: start the ingress on port 0 against the running RabbitMQ and Redis and GET
/// each path; a renamed route answers 404 and fails here.
fn assert_probe_paths_are_served(paths: BTreeSet<String>, scrape: BTreeSet<String>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let env = testbed::harness::EnvSpec::new("deploy");
        let config = testbed::harness::config(&env, &[]);
        let app = ingress::Application::build(config)
            .await
            .expect("ingress builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let admin = format!("http://127.0.0.1:{}", app.admin_port());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        let http = shared::http::client(std::time::Duration::from_secs(5));
        let get = |p: String| {
            let http = http.clone();
            // Scrape paths live on the admin port, probes on the public one.
            let url = if scrape.contains(&p) {
                format!("{admin}{p}")
            } else {
                format!("{base}{p}")
            };
            async move {
                http.get(&url)
                    .send()
                    .await
                    .expect("ingress answers")
                    .status()
            }
        };
        // The check can fail: an unknown path is a 404.
        assert_eq!(
            get("/no-such-probe".into()).await,
            reqwest::StatusCode::NOT_FOUND
        );
        for p in paths.iter().chain(&scrape) {
            // /readyz is 200 only with broker and Redis up, which they are on this machine.
            let ok = testbed::harness::eventually(std::time::Duration::from_secs(10), || {
                let p = p.clone();
                let get = &get;
                async move { get(p).await == reqwest::StatusCode::OK }
            })
            .await;
            assert!(
                ok,
                "the manifests probe {p}, which the ingress does not answer 200 (status {})",
                get(p.clone()).await
            );
        }
        let _ = tx.send(());
        let _ = server.await;
        testbed::harness::Inspector::connect()
            .await
            .delete_topology(&env_broker(&env))
            .await;
    });
}

fn env_broker(env: &testbed::harness::EnvSpec) -> shared::config::BrokerConfig {
    testbed::harness::config(env, &[]).broker
}
