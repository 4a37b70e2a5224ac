//! Typed Precoro calls the flows need (specs/precoro.md §3). Single documents are addressed by
//! `idn`, master data by `id`; `externalId` is set by PATCH and looked up with `external_id[]`.

use chrono::{DateTime, Utc};
use reqwest::Method;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::client::{PrecoroClient, Read};
use super::types::*;
use crate::error::{Api, Error, Result};
use crate::ids::{PrecoroId, PrecoroIdn};

type Query = Vec<(String, String)>;

fn push_list<T: ToString>(q: &mut Query, key: &str, values: &[T]) {
    for v in values {
        q.push((format!("{key}[]"), v.to_string()));
    }
}

fn push_since(q: &mut Query, since: Option<DateTime<Utc>>) {
    if let Some(t) = since {
        q.push(("modifiedSince".into(), format_modified_since(t)));
    }
}

fn push_flag(q: &mut Query, key: &str, flag: Option<bool>) {
    if let Some(b) = flag {
        q.push((key.into(), if b { "1" } else { "0" }.into()));
    }
}

fn decode<T: DeserializeOwned>(what: &str, v: Value) -> Result<T> {
    super::types::decode_value(v)
        .map_err(|e| Error::unexpected_reply(Api::Precoro, format!("{what}: {e}")))
}

fn to_body<T: serde::Serialize>(input: &T) -> Result<Value> {
    serde_json::to_value(input).map_err(|e| Error::Invalid(format!("cannot encode body: {e}")))
}

fn master_query(m: &MasterQuery) -> Query {
    let mut q = Query::new();
    push_list(&mut q, "external_id", &m.external_ids);
    push_flag(&mut q, "enable", m.enabled);
    push_since(&mut q, m.modified_since);
    q
}

#[derive(Deserialize)]
struct Created {
    #[serde(deserialize_with = "de::i64_or_zero")]
    id: i64,
    #[serde(default, deserialize_with = "de::opt_i64")]
    idn: Option<i64>,
}

impl PrecoroClient {
    // ------------------------------------------------------------------------------ invoices

    /// `GET /invoices/{idn}`; a body fetched within the last 60 s may be reused (see
    /// [`Read::Cached`]). After a webhook, use [`Self::get_invoice_fresh`].
    pub async fn get_invoice(&self, idn: PrecoroIdn) -> Result<Invoice> {
        self.get_json(&format!("/invoices/{idn}"), &[], Read::Cached)
            .await
    }

    /// `GET /invoices/{idn}` now, waiting out the identical-GET window if needed.
    pub async fn get_invoice_fresh(&self, idn: PrecoroIdn) -> Result<Invoice> {
        self.get_json(&format!("/invoices/{idn}"), &[], Read::Fresh)
            .await
    }

    /// `GET /invoices/{idn}` as of a hint received at `since`: a read whose request left after it
    /// (a first try's, for its retry) serves; else now, waiting out the identical-GET window.
    pub async fn get_invoice_since(
        &self,
        idn: PrecoroIdn,
        since: DateTime<Utc>,
    ) -> Result<Invoice> {
        self.get_json(&format!("/invoices/{idn}"), &[], Read::Since(since))
            .await
    }

    /// `GET /invoices` with filters, every page. Entries may lack items and attachments.
    pub async fn list_invoices(&self, f: &InvoiceQuery) -> Result<Vec<Invoice>> {
        self.list_invoices_with(f, Read::Cached).await
    }

    pub async fn list_invoices_with(&self, f: &InvoiceQuery, read: Read) -> Result<Vec<Invoice>> {
        let mut q = Query::new();
        push_list(&mut q, "status", &f.status);
        push_list(&mut q, "logicType", &f.logic_types);
        push_since(&mut q, f.modified_since);
        push_flag(&mut q, "sent_to_external", f.sent_to_external);
        push_list(&mut q, "external_id", &f.external_ids);
        if let Some(id) = f.id {
            q.push(("id".into(), id.to_string()));
        }
        self.list_all("/invoices", &q, f.per_page, read).await
    }

    /// The invoice's row in the list, as a cheap look after a hint received at `hint`:
    /// `GET /invoices?id=…&modifiedSince=…`. A list query is a different request from
    /// `GET /invoices/{idn}`, so it neither waits for nor opens that URL's identical-GET minute
    /// (§2), and `modifiedSince` (an hour before the hint, the second varied over a few
    /// candidates) makes each look its own request too: a look is never an identical GET and
    /// never waits one out, unless a hint repeats itself within the second (it then shares the
    /// body of the look that left after it). `None` when the list does not show the invoice
    /// (changed more than an hour before the hint): the caller reads the detail instead.
    pub async fn invoice_row(
        &self,
        id: PrecoroId,
        hint: DateTime<Utc>,
    ) -> Result<Option<InvoiceRow>> {
        let base = hint - chrono::Duration::hours(1);
        let urls = (0..8)
            .map(|n| {
                let q = [
                    ("id".to_string(), id.to_string()),
                    (
                        "modifiedSince".to_string(),
                        format_modified_since(base - chrono::Duration::seconds(n)),
                    ),
                    ("page".to_string(), "1".to_string()),
                    ("per_page".to_string(), "10".to_string()),
                ];
                self.url("/invoices", &q)
            })
            .collect::<Result<Vec<_>>>()?;
        let body = self.get_any(&urls, Read::Since(hint)).await?;
        let page: ListPage<Value> = super::types::decode(&body)
            .map_err(|e| Error::unexpected_reply(Api::Precoro, format!("GET /invoices: {e}")))?;
        for row in page.data {
            // Whether list rows carry the lines and attachments is unconfirmed (precoro-shapes.md
            // §2: the same transformer as the detail, but the KB hints at a difference): a row
            // with both is the whole invoice; one without them is only the look.
            let complete = row.get("items").is_some() && row.get("attachments").is_some();
            let invoice: Invoice = decode("GET /invoices row", row)?;
            if invoice.id == id {
                return Ok(Some(InvoiceRow { invoice, complete }));
            }
        }
        Ok(None)
    }

    /// The invoice with this internal id (`GET /invoices?id=`), as hotglue reads it before paying.
    pub async fn find_invoice_by_id(&self, id: PrecoroId) -> Result<Option<Invoice>> {
        let list = self
            .list_invoices_with(
                &InvoiceQuery {
                    id: Some(id),
                    per_page: Some(10),
                    ..Default::default()
                },
                Read::Fresh,
            )
            .await?;
        Ok(list.into_iter().find(|i| i.id == id))
    }

    /// `PATCH /invoices/{idn}` with `externalId` (empty string clears it). Returns the invoice
    /// when the reply is one (whether PATCH answers the record is unconfirmed [U]).
    pub async fn set_invoice_external_id(
        &self,
        idn: PrecoroIdn,
        external_id: &str,
    ) -> Result<Option<Invoice>> {
        let v = self
            .write_json(
                Method::PATCH,
                &format!("/invoices/{idn}"),
                &json!({ "externalId": external_id }),
            )
            .await?;
        Ok(serde_json::from_value(v).ok())
    }

    /// Stamp the Exact entry as the invoice's `externalId` and, when the invoice shows a sync
    /// message, clear it in the same PATCH: a booked invoice has nothing left to fix, and the
    /// clearing costs no call of its own.
    pub async fn stamp_invoice(
        &self,
        idn: PrecoroIdn,
        external_id: &str,
        clear_log: bool,
    ) -> Result<Option<Invoice>> {
        let body = if clear_log {
            json!({ "externalId": external_id, "externalIntegrationLog": "" })
        } else {
            json!({ "externalId": external_id })
        };
        let v = self
            .write_json(Method::PATCH, &format!("/invoices/{idn}"), &body)
            .await?;
        Ok(serde_json::from_value(v).ok())
    }

    /// Clear the invoice's `externalId` and say why in its `externalIntegrationLog`, in one
    /// PATCH: its Exact entry is gone (the invoice was cancelled and the entry deleted).
    pub async fn unstamp_invoice(&self, idn: PrecoroIdn, message: &str) -> Result<()> {
        self.write_json(
            Method::PATCH,
            &format!("/invoices/{idn}"),
            &json!({ "externalId": "", "externalIntegrationLog": message }),
        )
        .await?;
        Ok(())
    }

    /// Write `message` to the invoice's `externalIntegrationLog`, where finance sees why it did
    /// not book ("" clears it). The field is written as a string and read back as a list of
    /// strings [S]; whether a write appends or replaces, and whether the body is form or JSON,
    /// is unconfirmed (specs/precoro-shapes.md §13, and §15 item 3): `write_json` sends the
    /// company's body format and switches once when Precoro complains, and callers compare with
    /// the list's last entry, which is right under either rule.
    pub async fn set_invoice_integration_log(&self, idn: PrecoroIdn, message: &str) -> Result<()> {
        self.write_json(
            Method::PATCH,
            &format!("/invoices/{idn}"),
            &json!({ "externalIntegrationLog": message }),
        )
        .await?;
        Ok(())
    }

    /// `POST /invoices/{idn}/approve` [U: §3 "Approve"].
    pub async fn approve_invoice(&self, idn: PrecoroIdn) -> Result<Option<Invoice>> {
        let v = self
            .write_json(
                Method::POST,
                &format!("/invoices/{idn}/approve"),
                &json!({}),
            )
            .await?;
        Ok(serde_json::from_value(v).ok())
    }

    /// The file behind an attachment: its `url` when given, else `GET /attachments/{id}` [U: the
    /// download endpoint is unconfirmed, §3; shapes §10]. Through the API (a path, or a URL on
    /// Precoro's origin) it is an API call: counted in the budget, paced, under the identical-GET
    /// rule, and small files share the GET cache. A file link on another host (object storage)
    /// is not: fetched without auth, limits or budget.
    pub async fn download_attachment(&self, a: &Attachment) -> Result<Vec<u8>> {
        let url = match a.url.as_deref() {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => url::Url::parse(u)
                .map_err(|e| Error::Invalid(format!("attachment {} has a bad url: {e}", a.id)))?,
            Some(u) if u.starts_with('/') => self.url(u, &[])?,
            _ => self.url(&format!("/attachments/{}", a.id), &[])?,
        };
        Ok(self.get_url(url, Read::Cached).await?.to_vec())
    }

    // ------------------------------------------------------------------------------ payments

    /// `POST /payments` with `invoice[id]` (the **internal** id), `sumPaid`, `payDate`,
    /// `logicType` 0 (§3 "Marking paid"). Partial → Partly paid; full → Paid; an overpay is a 4xx
    /// whose message is surfaced. Amounts go with two decimals.
    pub async fn create_payment(
        &self,
        invoice_id: PrecoroId,
        amount: Decimal,
        pay_date: DateTime<Utc>,
    ) -> Result<(PrecoroId, PrecoroIdn)> {
        let amount = amount.round_dp(2);
        if amount <= Decimal::ZERO {
            return Err(Error::Invalid(format!(
                "payment amount must be positive, not {amount}"
            )));
        }
        let body = json!({
            "invoice": { "id": invoice_id.0 },
            "sumPaid": amount.to_string(),
            // The hotglue sample sends `2023-12-01T20:00:00Z` (§2 "Dates").
            "payDate": pay_date.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "logicType": 0,
        });
        let v = self.write_json(Method::POST, "/payments", &body).await?;
        let c: Created = decode("POST /payments", v)?;
        let idn = c
            .idn
            .ok_or_else(|| Error::unexpected_reply(Api::Precoro, "POST /payments: no idn"))?;
        Ok((PrecoroId(c.id), PrecoroIdn(idn)))
    }

    /// `PATCH /payments/{idn}` with `externalId`.
    pub async fn set_payment_external_id(&self, idn: PrecoroIdn, external_id: &str) -> Result<()> {
        self.write_json(
            Method::PATCH,
            &format!("/payments/{idn}"),
            &json!({ "externalId": external_id }),
        )
        .await?;
        Ok(())
    }

    pub async fn list_payments(&self, f: &PaymentQuery) -> Result<Vec<Payment>> {
        let mut q = Query::new();
        push_list(&mut q, "external_id", &f.external_ids);
        push_since(&mut q, f.modified_since);
        self.list_all("/payments", &q, f.per_page, Read::Cached)
            .await
    }

    /// Payments stamped with these external ids, read fresh (used for lookup-before-create).
    pub async fn find_payments_by_external_id(
        &self,
        external_ids: &[String],
    ) -> Result<Vec<Payment>> {
        let mut q = Query::new();
        push_list(&mut q, "external_id", external_ids);
        self.list_all("/payments", &q, None, Read::Fresh).await
    }

    // ------------------------------------------------------------------------------ suppliers

    pub async fn list_suppliers(&self, f: &SupplierQuery) -> Result<Vec<Supplier>> {
        let mut q = Query::new();
        push_flag(&mut q, "enable", f.enabled);
        push_list(&mut q, "status", &f.status);
        push_since(&mut q, f.modified_since);
        push_flag(&mut q, "externalIntegrated", f.external_integrated);
        push_list(&mut q, "external_id", &f.external_ids);
        self.list_all("/suppliers", &q, f.per_page, Read::Cached)
            .await
    }

    pub async fn get_supplier(&self, id: PrecoroId) -> Result<Supplier> {
        self.get_json(&format!("/suppliers/{id}"), &[], Read::Cached)
            .await
    }

    pub async fn get_supplier_fresh(&self, id: PrecoroId) -> Result<Supplier> {
        self.get_json(&format!("/suppliers/{id}"), &[], Read::Fresh)
            .await
    }

    /// Suppliers stamped with these external ids (Exact `Accounts.ID`), read fresh.
    pub async fn find_suppliers_by_external_id(
        &self,
        external_ids: &[String],
    ) -> Result<Vec<Supplier>> {
        let mut q = Query::new();
        push_list(&mut q, "external_id", external_ids);
        self.list_all("/suppliers", &q, None, Read::Fresh).await
    }

    /// `POST /suppliers`. Name and uniqueCode must be unique (a conflict is a 400).
    pub async fn create_supplier(&self, input: &SupplierInput) -> Result<Supplier> {
        if input.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
            return Err(Error::Invalid("a new supplier needs a name".into()));
        }
        let v = self
            .write_json(Method::POST, "/suppliers", &to_body(input)?)
            .await?;
        decode("POST /suppliers", v)
    }

    /// `PUT /suppliers/{id}` with every current field overlaid by `changes`; `currencies[]` is the
    /// union of the current and the new ones, because PUT replaces the list (§3 "Suppliers").
    pub async fn update_supplier(
        &self,
        current: &Supplier,
        changes: &SupplierInput,
    ) -> Result<Supplier> {
        let body = SupplierInput::from_supplier(current).overlay(changes);
        let v = self
            .write_json(
                Method::PUT,
                &format!("/suppliers/{}", current.id),
                &to_body(&body)?,
            )
            .await?;
        decode("PUT /suppliers", v)
    }

    /// `PATCH /suppliers/{id}` with only the fields set in `changes`.
    pub async fn patch_supplier(&self, id: PrecoroId, changes: &SupplierInput) -> Result<Supplier> {
        let v = self
            .write_json(
                Method::PATCH,
                &format!("/suppliers/{id}"),
                &to_body(changes)?,
            )
            .await?;
        decode("PATCH /suppliers", v)
    }

    pub async fn set_supplier_external_id(
        &self,
        id: PrecoroId,
        external_id: &str,
    ) -> Result<Supplier> {
        let v = self
            .write_json(
                Method::PATCH,
                &format!("/suppliers/{id}"),
                &json!({ "externalId": external_id }),
            )
            .await?;
        decode("PATCH /suppliers", v)
    }

    // ------------------------------------------------------------------------------ taxes

    pub async fn list_taxes(&self, f: &MasterQuery) -> Result<Vec<Tax>> {
        self.list_taxes_with(f, Read::Cached).await
    }

    pub async fn list_taxes_with(&self, f: &MasterQuery, read: Read) -> Result<Vec<Tax>> {
        self.list_all("/taxes", &master_query(f), f.per_page, read)
            .await
    }

    /// `POST /taxes` with `name` and `percent` (and `value`, defaulting to the percent).
    pub async fn create_tax(&self, input: &TaxInput) -> Result<Tax> {
        let (Some(_), Some(pct)) = (&input.name, input.percent) else {
            return Err(Error::Invalid(
                "a new tax needs a name and a percent".into(),
            ));
        };
        let mut input = input.clone();
        input.value.get_or_insert(pct);
        let v = self
            .write_json(Method::POST, "/taxes", &to_body(&input)?)
            .await?;
        decode("POST /taxes", v)
    }

    pub async fn patch_tax(&self, id: PrecoroId, changes: &TaxInput) -> Result<Tax> {
        let v = self
            .write_json(Method::PATCH, &format!("/taxes/{id}"), &to_body(changes)?)
            .await?;
        decode("PATCH /taxes", v)
    }

    pub async fn set_tax_external_id(&self, id: PrecoroId, external_id: &str) -> Result<Tax> {
        self.patch_tax(
            id,
            &TaxInput {
                external_id: Some(external_id.to_string()),
                ..Default::default()
            },
        )
        .await
    }

    // ------------------------------------------------------------------------------ payment terms

    /// `GET /paymentterms` (a list endpoint is [U] in §3; the simulator has one).
    pub async fn list_payment_terms(&self, f: &MasterQuery) -> Result<Vec<PaymentTerm>> {
        self.list_payment_terms_with(f, Read::Cached).await
    }

    pub async fn list_payment_terms_with(
        &self,
        f: &MasterQuery,
        read: Read,
    ) -> Result<Vec<PaymentTerm>> {
        self.list_all("/paymentterms", &master_query(f), f.per_page, read)
            .await
    }

    pub async fn create_payment_term(&self, input: &PaymentTermInput) -> Result<PaymentTerm> {
        if input.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
            return Err(Error::Invalid("a new payment term needs a name".into()));
        }
        let v = self
            .write_json(Method::POST, "/paymentterms", &to_body(input)?)
            .await?;
        decode("POST /paymentterms", v)
    }

    pub async fn patch_payment_term(
        &self,
        id: PrecoroId,
        changes: &PaymentTermInput,
    ) -> Result<PaymentTerm> {
        let v = self
            .write_json(
                Method::PATCH,
                &format!("/paymentterms/{id}"),
                &to_body(changes)?,
            )
            .await?;
        decode("PATCH /paymentterms", v)
    }

    pub async fn set_payment_term_external_id(
        &self,
        id: PrecoroId,
        external_id: &str,
    ) -> Result<PaymentTerm> {
        self.patch_payment_term(
            id,
            &PaymentTermInput {
                external_id: Some(external_id.to_string()),
                ..Default::default()
            },
        )
        .await
    }

    // ------------------------------------------------------------------------------ custom fields

    pub async fn list_custom_fields(&self, kind: CustomFieldKind) -> Result<Vec<CustomField>> {
        self.list_all(&format!("/{}", kind.path()), &[], None, Read::Cached)
            .await
    }

    pub async fn list_options(
        &self,
        kind: CustomFieldKind,
        field_id: i64,
        f: &MasterQuery,
    ) -> Result<Vec<CustomFieldOption>> {
        self.list_options_with(kind, field_id, f, Read::Cached)
            .await
    }

    pub async fn list_options_with(
        &self,
        kind: CustomFieldKind,
        field_id: i64,
        f: &MasterQuery,
        read: Read,
    ) -> Result<Vec<CustomFieldOption>> {
        self.list_all(
            &format!("/{}/{field_id}/options", kind.path()),
            &master_query(f),
            f.per_page,
            read,
        )
        .await
    }

    pub async fn create_option(
        &self,
        kind: CustomFieldKind,
        field_id: i64,
        input: &OptionInput,
    ) -> Result<CustomFieldOption> {
        if input.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
            return Err(Error::Invalid("a new option needs a name".into()));
        }
        let v = self
            .write_json(
                Method::POST,
                &format!("/{}/{field_id}/options", kind.path()),
                &to_body(input)?,
            )
            .await?;
        decode("POST options", v)
    }

    /// `PUT …/options/{id}`.
    pub async fn update_option(
        &self,
        kind: CustomFieldKind,
        field_id: i64,
        option_id: i64,
        input: &OptionInput,
    ) -> Result<CustomFieldOption> {
        let v = self
            .write_json(
                Method::PUT,
                &format!("/{}/{field_id}/options/{option_id}", kind.path()),
                &to_body(input)?,
            )
            .await?;
        decode("PUT options", v)
    }

    /// `PATCH …/options/{id}` with only the fields set (e.g. `enable: false` for a blocked account).
    pub async fn patch_option(
        &self,
        kind: CustomFieldKind,
        field_id: i64,
        option_id: i64,
        changes: &OptionInput,
    ) -> Result<CustomFieldOption> {
        let v = self
            .write_json(
                Method::PATCH,
                &format!("/{}/{field_id}/options/{option_id}", kind.path()),
                &to_body(changes)?,
            )
            .await?;
        decode("PATCH options", v)
    }

    pub async fn set_option_external_id(
        &self,
        kind: CustomFieldKind,
        field_id: i64,
        option_id: i64,
        external_id: &str,
    ) -> Result<CustomFieldOption> {
        self.patch_option(
            kind,
            field_id,
            option_id,
            &OptionInput {
                external_id: Some(external_id.to_string()),
                ..Default::default()
            },
        )
        .await
    }
}
