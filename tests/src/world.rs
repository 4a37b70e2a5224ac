//! A whole demo world for end-to-end tests, the sandbox and the benchmarks: both simulators seeded
//! with one company whose Precoro records carry the Exact ids (as reference and supplier sync
//! would stamp them), the company connected to Exact, and the ingress and workers running
//! in-process against the real RabbitMQ and Redis.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use shared::config::Config;
use shared::exact::client::ExactClient;
use shared::ids::{Division, ExactGuid};
use shared::precoro::PrecoroClient;
use shared::store::Store;
use shared::store::ratelimit::RateLimiter;

use crate::exact_sim::{DemoIds as ExactDemo, ExactSim, ExactSimOptions};
use crate::harness::{self, EnvSpec, Ingress, TenantSpec};
use crate::precoro_sim::{
    AttachmentSeed, DocFieldSeed, InvoiceSeed, ItemSeed, OptionSeed, PaymentTermSeed, PrecoroSim,
    PrecoroSimOptions, SupplierSeed, TaxSeed,
};
use crate::quiet::Quiet;

pub const TENANT: &str = "demo";

/// The secret connect links and OAuth states are signed with, shared by the CLI and the ingress.
pub const OAUTH_SECRET: &str = "Zq7v-Kp2x-Lm9w-Rt4y-Hs8c-Nb3d-Gf6j";

/// A browser that opens an operator's link: (the callback URL Exact sends it back to, the consent
/// cookie the ingress set). The link must start a consent.
pub async fn consent_in_browser(
    http: &reqwest::Client,
    world: &World,
    link: &str,
) -> (String, String) {
    let r = http.get(link).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303, "the link starts a consent");
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/oauth/exact"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let to_exact = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        to_exact.starts_with(&format!("{}/api/oauth2/auth?", world.exact.base_url())),
        "{to_exact}"
    );
    let r = http.get(&to_exact).send().await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        302,
        "the simulator's consent redirects"
    );
    let back = r.headers()["location"].to_str().unwrap().to_string();
    (back, cookie)
}

/// `(status, body)` of a GET asking for JSON, with `cookie` if any.
pub async fn get_json(
    http: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = http.get(url).header("accept", "application/json");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let r = req.send().await.unwrap();
    (
        r.status().as_u16(),
        r.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// The whole consent as the operator and the finance user do it: `worker exact connect` prints
/// the link, the browser opens it, consents at Exact and comes back to the ingress's callback
/// (which must be running on `config`'s public URL), which stores the tokens.
pub async fn consent_through_ingress(world: &World, config: &Config) {
    let link = worker::cli::exact::connect_url(config, &config.tenants[0]).expect("a link");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (back, cookie) = consent_in_browser(&http, world, &link).await;
    let (status, body) = get_json(&http, &back, Some(&cookie)).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &"connected".into()),
        "{body}"
    );
}

/// Precoro ids of the linked demo data.
#[derive(Debug, Clone)]
pub struct Linked {
    pub tax_21: i64,
    pub tax_9: i64,
    pub tax_0: i64,
    pub term_30: i64,
    pub gl_field: i64,
    pub cc_field: i64,
    pub cu_field: i64,
    pub project_field: i64,
    pub send_field: i64,
    pub send_yes: i64,
    pub send_no: i64,
    /// GL code → option id.
    pub gl: BTreeMap<String, i64>,
    pub cc: BTreeMap<String, i64>,
    pub cu: BTreeMap<String, i64>,
    pub project: i64,
    /// Precoro supplier ids linked to the Exact demo suppliers.
    pub suppliers: Vec<i64>,
    /// A supplier not yet in Exact.
    pub unlinked_supplier: i64,
}

/// Options for building a world.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    pub tag: &'static str,
    pub precoro_limits: bool,
    /// Precoro gives attachments file links on a storage host rather than the API's download
    /// endpoint (`PrecoroSimOptions::attachment_files`).
    pub precoro_attachment_files: bool,
    pub exact_minutely: u32,
    pub exact_daily: u32,
    /// Exact's 570 s between access tokens, shortened in both the simulator and the company's
    /// config (`tenants.exact.min_refresh_interval`), so a test can wait one out.
    pub exact_min_refresh_interval: Option<Duration>,
    /// Extra TOML for the tenant (flows).
    pub tenant_toml: String,
    pub env: Option<EnvSpec>,
    /// Seed Precoro's taxes, payment terms, options and suppliers already stamped with the Exact
    /// ids (as the reference and supplier flows would). Off: Precoro holds only the custom fields
    /// and an unlinked supplier, and the flows fill it in (the sandbox does that); then call
    /// `World::link_from_precoro` once they have.
    pub seed_precoro: bool,
    /// The finance user has consented to Exact before the service starts (as most tests want).
    /// Off: the company is configured but not connected yet; connect it through the ingress with
    /// [`World::public_ingress_config`] and [`consent_through_ingress`].
    pub connected: bool,
    /// The Precoro simulator's options (limits and windows), e.g. scaled for the day benchmark;
    /// `precoro_limits` still decides whether they are enforced. None: the published limits.
    pub precoro_sim: Option<PrecoroSimOptions>,
}

impl Default for WorldOptions {
    fn default() -> Self {
        WorldOptions {
            tag: "world",
            precoro_limits: false,
            precoro_attachment_files: false,
            exact_minutely: 60,
            exact_daily: 5000,
            exact_min_refresh_interval: None,
            tenant_toml: String::new(),
            env: None,
            seed_precoro: true,
            connected: true,
            precoro_sim: None,
        }
    }
}

pub struct World {
    pub exact: ExactSim,
    pub precoro: PrecoroSim,
    pub config: Config,
    pub tenant: TenantSpec,
    pub division: Division,
    pub exact_ids: ExactDemo,
    pub ids: Linked,
    pub store: Store,
    /// The exact TOML `config` was parsed from, so separate worker processes can load the same.
    pub toml: String,
}

impl World {
    /// Start both simulators, seed and link them, write the config, connect Exact.
    pub async fn build(opts: WorldOptions) -> World {
        let sim_defaults = ExactSimOptions::default();
        let min_refresh_interval = opts
            .exact_min_refresh_interval
            .unwrap_or(sim_defaults.min_refresh_interval);
        let exact = ExactSim::start(ExactSimOptions {
            minutely_limit: opts.exact_minutely,
            daily_limit: opts.exact_daily,
            min_refresh_interval,
            ..sim_defaults
        })
        .await;
        let precoro_base = opts.precoro_sim.clone().unwrap_or_default();
        let precoro = PrecoroSim::start(PrecoroSimOptions {
            enforce_limits: opts.precoro_limits,
            attachment_files: opts.precoro_attachment_files || precoro_base.attachment_files,
            ..precoro_base
        })
        .await;
        let division = Division(100_000 + (rand::random::<u32>() % 800_000) as i64);
        exact.add_division(division);
        let exact_ids = exact.seed_demo(division);
        let ids = if opts.seed_precoro {
            link(&precoro, &exact_ids)
        } else {
            fields_only(&precoro)
        };

        let mut tenant = TenantSpec::new(TENANT, division.0);
        tenant.precoro_url = precoro.base_url();
        tenant.precoro_token = precoro.token().to_string();
        tenant.precoro_email = precoro.email().to_string();
        tenant.exact_host = exact.base_url().to_string();
        tenant.client_id = exact.options().client_id.clone();
        tenant.client_secret = exact.options().client_secret.clone();
        tenant.webhook_secret = exact.options().webhook_secret.clone();
        tenant.extra_toml = format!(
            "[tenants.flows.invoices]\npoll_every = \"1h\"\n{}\n[tenants.custom_fields]\ngl_account = {}\ncost_center = {}\ncost_unit = {}\nproject = {}\n",
            opts.tenant_toml, ids.gl_field, ids.cc_field, ids.cu_field, ids.project_field
        );
        let mut env = opts.env.unwrap_or_else(|| EnvSpec::new(opts.tag));
        env.retry_tiers = vec!["300ms", "1s", "2s"];
        env.max_attempts = 12;
        let mut toml = harness::config_toml(&env, std::slice::from_ref(&tenant));
        // The harness writes default custom_fields; ours replace them.
        toml = toml.replace("[tenants.custom_fields]\ngl_account = 1\ncost_center = 2\ncost_unit = 3\nproject = 4\n", "");
        toml = toml.replace(
            "journal = \"70\"\n",
            &format!(
                "journal = \"70\"\nminutely_limit = {}\ndaily_limit = {}\nmin_refresh_interval = \"{}ms\"\n",
                opts.exact_minutely,
                opts.exact_daily,
                min_refresh_interval.as_millis()
            ),
        );
        if !opts.precoro_limits {
            // The simulator enforces no limits here: let the client go at full speed too.
            toml = toml.replace(
                "[tenants.exact]\n",
                "requests_per_second = 1000\nhourly_limit = 1000000\ndaily_limit = 1000000\nidentical_get_window = \"0s\"\n[tenants.exact]\n",
            );
        }
        let config = Config::from_toml(&toml, &|_| None).expect("world config is valid");
        let store = Store::connect(&config.redis)
            .await
            .expect("Redis at 127.0.0.1:6379");

        // The finance user consents once; the worker then refreshes by itself.
        if opts.connected {
            let t = &config.tenants[0];
            let client = ExactClient::for_tenant(
                t,
                store.clone(),
                RateLimiter::new(store.clone(), Duration::from_secs(5)),
            );
            let code = exact
                .grant_consent(&t.exact.client_id, &t.exact.redirect_uri)
                .expect("consent");
            client.exchange_code(&code).await.expect("code exchange");
        }

        World {
            exact,
            precoro,
            config,
            tenant,
            division,
            exact_ids,
            ids,
            store,
            toml,
        }
    }

    /// The world's config with the ingress on a known port and `public_url` pointing at it, as in
    /// a deployment (the OAuth redirect URI and webhook callback derive from `public_url`), and
    /// connect links signed with [`OAUTH_SECRET`].
    pub fn public_ingress_config(&self) -> Config {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let toml = self.toml.replacen(
            "[ingress]\nlisten = \"127.0.0.1:0\"\n",
            &format!(
                "[ingress]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\noauth_state_secret = \"{OAUTH_SECRET}\"\n"
            ),
            1,
        );
        assert_ne!(
            toml, self.toml,
            "the world config has an [ingress] listen line"
        );
        Config::from_toml(&toml, &|_| None).expect("config with a public URL")
    }

    /// An approved invoice with `lines` of (description, quantity, unit price, GL code, VAT %).
    pub fn approved_invoice(
        &self,
        number: &str,
        supplier: i64,
        lines: &[(&str, i64, &str, &str, u32)],
    ) -> (i64, i64) {
        self.invoice(InvoiceDraft {
            number: number.to_string(),
            supplier,
            lines: lines
                .iter()
                .map(|l| (l.0.to_string(), l.1, l.2.to_string(), l.3.to_string(), l.4))
                .collect(),
            status: 2,
            ..Default::default()
        })
    }

    pub fn invoice(&self, d: InvoiceDraft) -> (i64, i64) {
        let tax = |pct: u32| match pct {
            21 => self.ids.tax_21,
            9 => self.ids.tax_9,
            _ => self.ids.tax_0,
        };
        let items = d
            .lines
            .iter()
            .enumerate()
            .map(|(i, (name, qty, price, gl, vat))| {
                let mut options = vec![(
                    self.ids.gl_field,
                    *self.ids.gl.get(gl).expect("known GL code"),
                )];
                if d.dimensions {
                    let cc = if i % 2 == 0 { "CC100" } else { "CC200" };
                    let cu = if i % 2 == 0 { "CU1" } else { "CU2" };
                    options.push((self.ids.cc_field, self.ids.cc[cc]));
                    options.push((self.ids.cu_field, self.ids.cu[cu]));
                }
                ItemSeed {
                    name: name.clone(),
                    quantity: Decimal::from(*qty),
                    price: price.parse().expect("a decimal price"),
                    tax_id: Some(tax(*vat)),
                    options,
                    ..Default::default()
                }
            })
            .collect();
        let mut document_fields = vec![DocFieldSeed {
            field_id: self.ids.send_field,
            option_id: Some(if d.send_to_exact {
                self.ids.send_yes
            } else {
                self.ids.send_no
            }),
            value: None,
        }];
        if d.dimensions {
            document_fields.push(DocFieldSeed {
                field_id: self.ids.project_field,
                option_id: Some(self.ids.project),
                value: None,
            });
        }
        self.precoro.add_invoice(InvoiceSeed {
            supplier_id: Some(d.supplier),
            invoice_number: Some(d.number.clone()),
            status: d.status,
            logic_type: d.logic_type,
            issue_date: NaiveDate::from_ymd_opt(2026, 11, 2),
            payment_term_id: Some(self.ids.term_30),
            items,
            document_fields,
            attachments: if d.pdf {
                vec![AttachmentSeed {
                    name: format!("{}.pdf", d.number),
                    format_type: "pdf".into(),
                    bytes: fake_pdf(&d.number),
                }]
            } else {
                vec![]
            },
            parent_idn: d.parent_idn,
            split_index: d.split_index,
            ..Default::default()
        })
    }

    /// Read back the Precoro ids of what the reference and supplier flows created, by the Exact
    /// ids stamped on them. Names what is still missing, so a caller can wait and try again.
    pub fn link_from_precoro(&mut self) -> Result<(), String> {
        let p = &self.precoro;
        let e = &self.exact_ids;
        let by_ext = |rows: Vec<serde_json::Value>, ext: &str| {
            rows.iter()
                .find(|r| {
                    r["externalId"]
                        .as_str()
                        .is_some_and(|x| x.eq_ignore_ascii_case(ext))
                })
                .and_then(|r| r["id"].as_i64())
        };
        let missing = |what: String| format!("Precoro has no {what} yet");
        let tax = |code: &str| {
            by_ext(p.taxes(), code).ok_or_else(|| missing(format!("tax stamped '{code}'")))
        };
        let option = |field: i64, ext: &str, what: &str| {
            by_ext(p.options(field), ext)
                .ok_or_else(|| missing(format!("{what} option stamped '{ext}'")))
        };
        let mut gl = BTreeMap::new();
        for (code, id) in &e.gl_accounts {
            gl.insert(
                code.clone(),
                option(self.ids.gl_field, &id.to_string(), "GL account")?,
            );
        }
        let mut cc = BTreeMap::new();
        for code in e.cost_centers.keys() {
            cc.insert(
                code.clone(),
                option(self.ids.cc_field, code, "cost center")?,
            );
        }
        let mut cu = BTreeMap::new();
        for code in e.cost_units.keys() {
            cu.insert(code.clone(), option(self.ids.cu_field, code, "cost unit")?);
        }
        let (_, pid) = e.projects.iter().next().expect("a demo project");
        let project = option(self.ids.project_field, &pid.to_string(), "project")?;
        let suppliers = e
            .suppliers
            .iter()
            .map(|s| {
                by_ext(p.suppliers(), &s.id.to_string())
                    .ok_or_else(|| missing(format!("supplier linked to {}", s.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.ids = Linked {
            tax_21: tax("1")?,
            tax_9: tax("2")?,
            tax_0: tax("0")?,
            term_30: by_ext(p.payment_terms(), "30")
                .ok_or_else(|| missing("payment term stamped '30'".into()))?,
            gl,
            cc,
            cu,
            project,
            suppliers,
            ..self.ids.clone()
        };
        Ok(())
    }

    /// Every dead letter of this world's broker prefix (listing leaves them in place).
    pub async fn dead_letters(&self) -> Vec<shared::bus::dlq::DeadLetter> {
        shared::bus::dlq::DeadLetters::connect(&self.config.broker)
            .await
            .expect("broker up")
            .list(&shared::bus::dlq::Filter::default())
            .await
            .expect("the DLQ lists")
    }

    /// Nothing needed a person: no message was dead-lettered.
    pub async fn assert_no_dead_letters(&self) {
        let dead = self.dead_letters().await;
        assert!(dead.is_empty(), "nothing dead-lettered: {dead:#?}");
    }

    /// The demo company's Exact client on the world's Redis, as another replica holds it.
    pub fn exact_client(&self) -> ExactClient {
        ExactClient::for_tenant(
            &self.config.tenants[0],
            self.store.clone(),
            RateLimiter::new(self.store.clone(), Duration::from_secs(5)),
        )
    }

    /// The demo company's Precoro client on the world's Redis.
    pub fn precoro_client(&self) -> PrecoroClient {
        PrecoroClient::new(
            &self.config.tenants[0],
            self.store.clone(),
            RateLimiter::new(self.store.clone(), Duration::from_secs(5)),
        )
    }

    /// The division holds one Exact document, with `number`'s PDF attached once, and `entry` links
    /// it: what a booked invoice with a PDF leaves, however often it was tried.
    pub fn assert_one_document_with_pdf(&self, entry: &serde_json::Value, number: &str, tag: &str) {
        let documents = self.exact.rows(self.division, "documents/Documents");
        assert_eq!(documents.len(), 1, "{tag}: one document: {documents:?}");
        let attachments = self.exact.document_attachments(self.division);
        assert_eq!(attachments.len(), 1, "{tag}: the PDF is attached once");
        assert_eq!(attachments[0].bytes, fake_pdf(number));
        assert_eq!(
            entry["Document"].as_str(),
            documents[0]["ID"].as_str(),
            "{tag}: the entry links that document"
        );
    }

    /// The Exact entries booked for a YourRef.
    pub fn entries_for(&self, your_ref: &str) -> Vec<serde_json::Value> {
        self.exact
            .purchase_entries(self.division)
            .into_iter()
            .filter(|e| e.request["YourRef"] == your_ref)
            .map(|e| e.request)
            .collect()
    }

    /// The Precoro webhook URL of the demo company at `ingress_base`.
    pub fn precoro_webhook_url(&self, ingress_base: &str) -> String {
        format!(
            "{ingress_base}/webhooks/precoro/{TENANT}/{}",
            self.tenant.webhook_token
        )
    }
}

/// What an invoice in the demo world looks like.
#[derive(Debug, Clone)]
pub struct InvoiceDraft {
    pub number: String,
    pub supplier: i64,
    /// (description, quantity, unit price, GL code, VAT %).
    pub lines: Vec<(String, i64, String, String, u32)>,
    pub status: i64,
    pub logic_type: i64,
    pub dimensions: bool,
    pub pdf: bool,
    pub send_to_exact: bool,
    pub parent_idn: Option<i64>,
    pub split_index: Option<i64>,
}

impl Default for InvoiceDraft {
    fn default() -> Self {
        InvoiceDraft {
            number: String::new(),
            supplier: 0,
            lines: vec![],
            status: 2,
            logic_type: 0,
            dimensions: false,
            pdf: false,
            send_to_exact: true,
            parent_idn: None,
            split_index: None,
        }
    }
}

/// One line of an [`InvoiceDraft`]: (description, quantity, unit price, GL code, VAT %).
pub fn line(
    name: &str,
    qty: i64,
    price: &str,
    gl: &str,
    vat: u32,
) -> (String, i64, String, String, u32) {
    (name.into(), qty, price.into(), gl.into(), vat)
}

/// An amount as Precoro or Exact gives it (a string or a number), to the cent.
pub fn dec(v: &serde_json::Value) -> Decimal {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    s.parse::<Decimal>()
        .unwrap_or_else(|e| panic!("not a number: {v} ({e})"))
        .round_dp(2)
}

/// A small valid-looking PDF.
pub fn fake_pdf(title: &str) -> Vec<u8> {
    format!("%PDF-1.4\n% invoice {title}\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n").into_bytes()
}

/// What a company configures in Precoro by hand before connecting: the custom fields (empty), the
/// export-condition field, and one supplier that Exact does not know yet.
fn fields_only(p: &PrecoroSim) -> Linked {
    let send_field = p.add_document_custom_field("Send to Exact Online");
    let option = |name: &str, code: &str| {
        p.add_option(
            send_field,
            OptionSeed {
                name: name.into(),
                code: Some(code.into()),
                ..Default::default()
            },
        )
    };
    Linked {
        tax_21: 0,
        tax_9: 0,
        tax_0: 0,
        term_30: 0,
        gl_field: p.add_item_custom_field("GL account"),
        cc_field: p.add_item_custom_field("Cost center"),
        cu_field: p.add_item_custom_field("Cost unit"),
        project_field: p.add_document_custom_field("Project"),
        send_yes: option("Yes", "YES"),
        send_no: option("No", "NO"),
        send_field,
        gl: BTreeMap::new(),
        cc: BTreeMap::new(),
        cu: BTreeMap::new(),
        project: 0,
        suppliers: vec![],
        unlinked_supplier: p.add_supplier(SupplierSeed {
            name: "Initech LLC".into(),
            unique_code: Some("INITECH".into()),
            tax_payer_number: Some("US987654321".into()),
            ..Default::default()
        }),
    }
}

/// Seed Precoro with the demo company and stamp the Exact ids as externalIds.
fn link(p: &PrecoroSim, e: &ExactDemo) -> Linked {
    let tax = |name: &str, pct: i64, code: &str| {
        p.add_tax(TaxSeed {
            name: name.into(),
            percent: Decimal::from(pct),
            external_id: Some(code.into()),
            ..Default::default()
        })
    };
    let tax_21 = tax("VAT 21%", 21, "1");
    let tax_9 = tax("VAT 9%", 9, "2");
    let tax_0 = tax("VAT 0%", 0, "0");
    let term_30 = p.add_payment_term(PaymentTermSeed {
        name: "Net 30 days".into(),
        days: 30,
        external_id: Some("30".into()),
    });
    let gl_field = p.add_item_custom_field("GL account");
    let cc_field = p.add_item_custom_field("Cost center");
    let cu_field = p.add_item_custom_field("Cost unit");
    let project_field = p.add_document_custom_field("Project");
    let send_field = p.add_document_custom_field("Send to Exact Online");
    let option = |field: i64, name: &str, code: &str, ext: Option<String>| {
        p.add_option(
            field,
            OptionSeed {
                name: name.into(),
                code: Some(code.into()),
                external_id: ext,
                ..Default::default()
            },
        )
    };
    let gl = e
        .gl_accounts
        .iter()
        .map(|(code, id)| {
            (
                code.clone(),
                option(gl_field, &format!("GL {code}"), code, Some(id.to_string())),
            )
        })
        .collect();
    let cc = e
        .cost_centers
        .keys()
        .map(|code| {
            (
                code.clone(),
                option(cc_field, code, code, Some(code.clone())),
            )
        })
        .collect();
    let cu = e
        .cost_units
        .keys()
        .map(|code| {
            (
                code.clone(),
                option(cu_field, code, code, Some(code.clone())),
            )
        })
        .collect();
    let (pcode, pid): (&String, &ExactGuid) = e.projects.iter().next().expect("a demo project");
    let project = option(project_field, pcode, pcode, Some(pid.to_string()));
    let send_yes = option(send_field, "Yes", "YES", None);
    let send_no = option(send_field, "No", "NO", None);
    let suppliers = e
        .suppliers
        .iter()
        .map(|s| {
            p.add_supplier(SupplierSeed {
                name: s.name.clone(),
                unique_code: Some(s.code.clone()),
                tax_payer_number: Some(s.vat_number.clone()),
                external_id: Some(s.id.to_string()),
                payment_term_ids: vec![term_30],
                ..Default::default()
            })
        })
        .collect();
    let unlinked_supplier = p.add_supplier(SupplierSeed {
        name: "Initech LLC".into(),
        unique_code: Some("INITECH".into()),
        tax_payer_number: Some("US987654321".into()),
        ..Default::default()
    });
    Linked {
        tax_21,
        tax_9,
        tax_0,
        term_30,
        gl_field,
        cc_field,
        cu_field,
        project_field,
        send_field,
        send_yes,
        send_no,
        gl,
        cc,
        cu,
        project,
        suppliers,
        unlinked_supplier,
    }
}

/// The service itself, running in-process: one ingress and `workers` workers.
pub struct Stack {
    pub ingress_base: String,
    /// The ingress's admin port (metrics, health; the operator console's home).
    pub admin_base: String,
    broker: shared::config::BrokerConfig,
    ingress: Option<Ingress>,
    pub workers: Vec<worker::Worker>,
    quiet: Quiet,
}

impl Stack {
    /// Start the ingress and `workers` workers (invoice flow; no scheduler unless asked), and
    /// point the Precoro simulator's webhooks at the ingress.
    pub async fn start(world: &World, workers: usize, scheduler: bool) -> Stack {
        let ingress = Ingress::start(world.config.clone()).await;
        let mut ws = Vec::new();
        for i in 0..workers {
            let parts = worker::Parts {
                scheduler: scheduler && i == 0,
                ..worker::Parts::default()
            };
            ws.push(
                worker::Worker::start(world.config.clone(), parts)
                    .await
                    .expect("worker starts"),
            );
        }
        world
            .precoro
            .set_webhook_urls(vec![world.precoro_webhook_url(&ingress.base)]);
        let mut quiet = Quiet::new()
            .broker(&world.config.broker)
            .publisher("the ingress's publisher", ingress.publisher.clone())
            .work("Exact's webhooks", world.exact.webhook_activity())
            .work("Precoro's webhooks", world.precoro.webhook_activity());
        for (i, w) in ws.iter().enumerate() {
            quiet = quiet
                .work(&format!("worker {i}"), w.activity().clone())
                .publisher(
                    &format!("worker {i}'s publisher"),
                    w.context.publisher.clone(),
                );
        }
        Stack {
            ingress_base: ingress.base.clone(),
            admin_base: ingress.admin.clone(),
            broker: world.config.broker.clone(),
            ingress: Some(ingress),
            workers: ws,
            quiet,
        }
    }

    /// Wait until nothing moves: every flow and wait queue empty, every worker idle, no publish
    /// or simulator webhook on its way (see [`crate::quiet`]). What a test does before it checks
    /// that nothing more happened.
    pub async fn settle(&self) {
        self.quiet.settle().await
    }

    /// What [`Stack::settle`] watches, to add what runs outside this process.
    pub fn quiet(&self) -> Quiet {
        self.quiet.clone()
    }

    pub async fn stop(mut self) {
        for w in self.workers.drain(..) {
            w.shutdown().await;
        }
        if let Some(ingress) = self.ingress.take() {
            ingress.stop().await;
        }
        // Every test declares its own prefixed queues: leave the shared broker as it was found,
        // or hundreds of idle quorum queues pile up across runs and slow every declare.
        crate::harness::Inspector::connect()
            .await
            .delete_topology(&self.broker)
            .await;
    }
}
