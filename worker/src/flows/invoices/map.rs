//! Precoro invoice → Exact purchase entry: the mapping, the export decision and the totals check.
//! Pure functions, so every rule is tested without a network.
//!
//! Precoro's `externalId` fields are the mapping table (DESIGN.md): reference sync stamps the
//! Exact code or GUID on every tax, payment term and custom-field option, and supplier sync stamps
//! `Accounts.ID` on suppliers. A missing stamp is a permanent error naming the Precoro field and
//! value, so an operator can fix the data and replay.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use shared::config::TenantConfig;
use shared::error::Error;
use shared::exact::types::{NewPurchaseEntry, NewPurchaseEntryLine};
use shared::ids::ExactGuid;
use shared::precoro::{
    CustomFieldKind, CustomFieldOption, CustomFieldValue, Invoice, InvoiceItem, LineTax,
    PaymentTerm, Tax, status,
};

/// Why an invoice is not exported now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    NotApproved(i64),
    AlreadyExported(String),
    /// The base document's idn, when the split marker names it.
    SplitChild(Option<i64>),
    ExportConditionFalse,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NotApproved(s) => write!(f, "not approved (status {s})"),
            Skip::AlreadyExported(id) => write!(f, "already exported as Exact entry {id}"),
            Skip::SplitChild(Some(parent)) => write!(
                f,
                "split-cost child of invoice {parent}; only the base document is exported"
            ),
            Skip::SplitChild(None) => {
                f.write_str("split-cost child; only the base document is exported")
            }
            Skip::ExportConditionFalse => f.write_str("export condition not met"),
        }
    }
}

/// Should this invoice go to Exact now? The export condition is asked separately
/// ([`condition_met`]): it may need the field's options.
pub fn decide(invoice: &Invoice) -> Result<(), Skip> {
    if let Some(ext) = invoice
        .external_id
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    {
        return Err(Skip::AlreadyExported(ext.to_string()));
    }
    if invoice.status != status::APPROVED {
        return Err(Skip::NotApproved(invoice.status));
    }
    // Split-cost: export only the base document (specs/precoro-shapes.md §1.8).
    if let Some(parent) = invoice.split_parent() {
        return Err(Skip::SplitChild(parent));
    }
    Ok(())
}

/// The company's export condition ("Send to Exact Online" = "Yes"), compared with the chosen
/// option's name or code, or the plain value.
pub fn condition_met(invoice: &Invoice, tenant: &TenantConfig, lookups: &Lookups) -> bool {
    let Some(cond) = &tenant.flows.invoices.export_condition else {
        return true;
    };
    let want = cond.value.trim();
    let Some(entry) = invoice.document_field(cond.field_id) else {
        return false;
    };
    let shown = |s: &Option<String>| s.as_deref().map(str::trim) == Some(want);
    if let Some(o) = &entry.option
        && (shown(&o.name) || shown(&o.code))
    {
        return true;
    }
    if shown(&entry.value) {
        return true;
    }
    matches!(
        pick(entry, lookups.options(cond.field_id)),
        Pick::Listed(o) if shown(&o.name) || shown(&o.code)
    )
}

// ---------------------------------------------------------------------------------------------
// Lookups: what an invoice names by Precoro id only
// ---------------------------------------------------------------------------------------------

/// The records an invoice refers to by id or label only, as reference sync stamped them: a real
/// line's custom-field value is the option's id as a string, a line's tax names no master tax,
/// and the invoice's `paymentTerm` is `{id}` (specs/precoro-shapes.md §4, §5, §7). Loaded by the
/// flow from Precoro's lists (cached GETs) only for what [`needs`] says is missing inline.
///
/// The lists are shared (`Arc`) with the worker's copy ([`super::lookups`]), not copied per invoice.
#[derive(Debug, Clone, Default)]
pub struct Lookups {
    /// Options of a custom field, by the field's id.
    pub options: HashMap<i64, Arc<Vec<CustomFieldOption>>>,
    pub taxes: Arc<Vec<Tax>>,
    pub terms: Arc<Vec<PaymentTerm>>,
}

impl Lookups {
    fn options(&self, field_id: i64) -> &[CustomFieldOption] {
        self.options
            .get(&field_id)
            .map(|o| o.as_slice())
            .unwrap_or(&[])
    }

    /// `self` with every list `newer` carries replaced by it.
    pub fn merged(mut self, newer: Lookups) -> Lookups {
        self.options.extend(newer.options);
        if !newer.taxes.is_empty() {
            self.taxes = newer.taxes;
        }
        if !newer.terms.is_empty() {
            self.terms = newer.terms;
        }
        self
    }
}

/// The lists an invoice needs before it can be mapped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub fields: Vec<(CustomFieldKind, i64)>,
    pub taxes: bool,
    pub terms: bool,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && !self.taxes && !self.terms
    }
}

fn has_text(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.trim().is_empty())
}

/// An entry whose choice is known only by a value: the options list must say what it is.
fn names_by_value(entry: &CustomFieldValue) -> bool {
    let inline = entry
        .option
        .as_ref()
        .is_some_and(|o| has_text(&o.external_id));
    !inline && has_text(&entry.value)
}

pub fn needs(invoice: &Invoice, tenant: &TenantConfig) -> Needs {
    let cf = &tenant.custom_fields;
    let mut out = Needs::default();
    for field in [cf.gl_account, cf.cost_center, cf.cost_unit]
        .into_iter()
        .flatten()
    {
        if invoice
            .items
            .iter()
            .filter_map(|i| i.field(field))
            .any(names_by_value)
            && !out.fields.contains(&(CustomFieldKind::Item, field))
        {
            out.fields.push((CustomFieldKind::Item, field));
        }
    }
    let condition = tenant.flows.invoices.export_condition.as_ref();
    let doc_fields = [cf.project, condition.map(|c| c.field_id)];
    for field in doc_fields.into_iter().flatten() {
        if invoice.document_field(field).is_some_and(names_by_value)
            && !out.fields.contains(&(CustomFieldKind::Document, field))
        {
            out.fields.push((CustomFieldKind::Document, field));
        }
    }
    out.taxes = invoice
        .items
        .iter()
        .flat_map(InvoiceItem::tax_entries)
        .any(|t| !t.is_withholding() && !has_text(&t.external_id));
    out.terms = invoice
        .payment_term
        .as_ref()
        .is_some_and(|t| t.id.is_some() && !has_text(&t.external_id));
    out
}

/// The lists among `wanted` (what [`needs`] named) that leave a value of `invoice` unresolved: a value
/// naming no listed option, an option, tax or term without its externalId. Reloaded fresh once,
/// since reference sync (or a user) may have written them after the list was read.
pub fn unresolved(invoice: &Invoice, wanted: &Needs, lookups: &Lookups) -> Needs {
    let fields = wanted
        .fields
        .iter()
        .copied()
        .filter(|(kind, field)| {
            let entries: Vec<&CustomFieldValue> = match kind {
                CustomFieldKind::Item => invoice
                    .items
                    .iter()
                    .filter_map(|i| i.field(*field))
                    .collect(),
                CustomFieldKind::Document => invoice.document_field(*field).into_iter().collect(),
            };
            entries
                .into_iter()
                .any(|e| match pick(e, lookups.options(*field)) {
                    Pick::Unknown(_) => true,
                    Pick::Listed(o) => !has_text(&o.external_id),
                    Pick::None | Pick::Inline(_) => false,
                })
        })
        .collect();
    let taxes = wanted.taxes
        && invoice
            .items
            .iter()
            .flat_map(vat_entries)
            .any(|t| tax_code(t, lookups, "").is_err());
    let terms = wanted.terms && payment_condition(invoice, lookups, "").is_err();
    Needs {
        fields,
        taxes,
        terms,
    }
}

/// What a custom-field entry chose.
enum Pick<'a> {
    /// Nothing chosen.
    None,
    /// The entry carries the option itself.
    Inline(&'a shared::precoro::Ref),
    /// The value names an option of the field's list, by id or by name, code or label.
    Listed(&'a CustomFieldOption),
    /// The value names no option of the list.
    Unknown(&'a str),
}

fn pick<'a>(entry: &'a CustomFieldValue, options: &'a [CustomFieldOption]) -> Pick<'a> {
    if let Some(o) = &entry.option
        && (has_text(&o.external_id) || !has_text(&entry.value))
    {
        return Pick::Inline(o);
    }
    let Some(value) = entry
        .value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        return Pick::None;
    };
    let by_id = value
        .parse::<i64>()
        .ok()
        .and_then(|id| options.iter().find(|o| o.id == id));
    let same = |s: &Option<String>| {
        s.as_deref()
            .is_some_and(|s| s.trim().eq_ignore_ascii_case(value))
    };
    match by_id.or_else(|| options.iter().find(|o| same(&o.name) || same(&o.code))) {
        Some(o) => Pick::Listed(o),
        None => Pick::Unknown(value),
    }
}

fn field_name(v: &CustomFieldValue, fallback: &str) -> String {
    v.field
        .as_ref()
        .and_then(|f| f.name.clone())
        .unwrap_or_else(|| fallback.to_string())
}

/// The externalId of the option chosen for `field_id`; `Ok(None)` when the field is not set.
fn option_external_id(
    entry: Option<&CustomFieldValue>,
    lookups: &Lookups,
    field_id: i64,
    what: &str,
    context: &str,
) -> Result<Option<String>, Error> {
    let Some(v) = entry else {
        return Ok(None);
    };
    let (name, external_id) = match pick(v, lookups.options(field_id)) {
        Pick::None => return Ok(None),
        Pick::Inline(o) => (o.name.as_deref().or(o.code.as_deref()), &o.external_id),
        Pick::Listed(o) => (o.name.as_deref().or(o.code.as_deref()), &o.external_id),
        Pick::Unknown(value) => {
            return Err(Error::MissingMapping(format!(
                "{context}: '{value}' in custom field '{}' ({what}) is no option Precoro lists for field {field_id}. Choose the {what} again, then save the invoice",
                field_name(v, what)
            )));
        }
    };
    match external_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(ext) => Ok(Some(ext.to_string())),
        None => Err(Error::MissingMapping(format!(
            "{context}: the {what} option '{}' (custom field '{}') has no Exact {what} (no externalId). Map it, then save the invoice",
            name.unwrap_or("?"),
            field_name(v, what)
        ))),
    }
}

fn guid(value: &str, what: &str, context: &str) -> Result<ExactGuid, Error> {
    value.parse().map_err(|_| {
        Error::MissingMapping(format!(
            "{context}: {what} externalId '{value}' is not an Exact GUID"
        ))
    })
}

/// Dates arrive as ISO date-times with or without an offset, or plain dates; the calendar date
/// is what Exact books.
pub fn date_of(value: Option<&str>) -> Option<NaiveDate> {
    let v = value?.trim();
    let day = v.get(..10)?;
    NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()
}

/// Round half away from zero to cents.
fn cents(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
}

/// A line's net amount: a total Precoro gives, else price × ordered.
fn line_net(item: &InvoiceItem, context: &str) -> Result<Decimal, Error> {
    item.net().ok_or_else(|| {
        Error::Invalid(format!(
            "{context} has no amount: neither a total (netSum, netTotal) nor a price and a quantity (ordered)"
        ))
    })
}

/// The taxes that are VAT (withholding taxes are settled apart from the purchase entry).
fn vat_entries(item: &InvoiceItem) -> impl Iterator<Item = &LineTax> {
    item.tax_entries().filter(|t| !t.is_withholding())
}

/// A line's VAT: `taxAmount` when given, else the sum of its taxes' amounts, else `sum - netSum`,
/// else net × the tax rate.
fn line_vat(item: &InvoiceItem, net: Decimal) -> Decimal {
    if let Some(t) = item.tax_amount {
        return t;
    }
    let sums: Vec<Decimal> = vat_entries(item).filter_map(|t| t.sum).collect();
    if !sums.is_empty() {
        return sums.into_iter().sum();
    }
    if let (Some(sum), Some(net)) = (item.sum, item.net_sum) {
        return sum - net;
    }
    let pct = vat_entries(item)
        .find_map(LineTax::rate)
        .unwrap_or_default();
    cents(net * pct / Decimal::from(100))
}

/// The Exact VAT code of one tax entry: its own externalId, else that of the tax reference sync
/// stamped with the same id and name, else the one with the same name and rate.
fn tax_code(t: &LineTax, lookups: &Lookups, context: &str) -> Result<String, Error> {
    let ext = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    if let Some(code) = ext(&t.external_id) {
        return Ok(code);
    }
    let label = t.name.as_deref().unwrap_or("?");
    let rate = t
        .rate()
        .map(|r| format!(" ({} %)", r.normalize()))
        .unwrap_or_default();
    let same_name = |m: &Tax| {
        m.name
            .as_deref()
            .zip(t.name.as_deref())
            .is_some_and(|(a, b)| a.trim().eq_ignore_ascii_case(b.trim()))
    };
    let by_id = lookups
        .taxes
        .iter()
        .find(|m| Some(m.id.0) == t.id && same_name(m));
    let mut by_rate = lookups
        .taxes
        .iter()
        .filter(|m| same_name(m) && t.rate().is_none_or(|r| r == m.percent));
    let master = match by_id {
        Some(m) => m,
        None => match (by_rate.next(), by_rate.next()) {
            (Some(m), None) => m,
            (Some(_), Some(_)) => {
                return Err(Error::MissingMapping(format!(
                    "{context}: tax '{label}'{rate} matches several Precoro taxes. Give each tax its own name, then save the invoice"
                )));
            }
            (None, _) => {
                return Err(Error::MissingMapping(format!(
                    "{context}: tax '{label}'{rate} matches no Precoro tax synced from Exact. Map it to an Exact VAT code, then save the invoice"
                )));
            }
        },
    };
    ext(&master.external_id).ok_or_else(|| {
        Error::MissingMapping(format!(
            "{context}: tax '{label}'{rate} has no Exact VAT code (no externalId). Map it, then save the invoice"
        ))
    })
}

/// Exact books one VAT code per line.
fn line_vat_code(
    item: &InvoiceItem,
    lookups: &Lookups,
    context: &str,
) -> Result<Option<String>, Error> {
    let mut code: Option<String> = None;
    for t in vat_entries(item) {
        let c = tax_code(t, lookups, context)?;
        match &code {
            Some(seen) if *seen != c => {
                return Err(Error::Invalid(format!(
                    "{context} carries two VAT taxes ({seen} and {c}); Exact books one VAT code per line. Split the line, then save the invoice"
                )));
            }
            _ => code = Some(c),
        }
    }
    Ok(code)
}

/// The payment term's Exact payment condition: the externalId on the invoice's `paymentTerm`
/// when it carries one, else that of the listed term with its id.
fn payment_condition(
    invoice: &Invoice,
    lookups: &Lookups,
    doc: &str,
) -> Result<Option<String>, Error> {
    let Some(term) = &invoice.payment_term else {
        return Ok(None);
    };
    let listed = term
        .id
        .and_then(|id| lookups.terms.iter().find(|t| t.id == Some(id)));
    let ext = [
        term.external_id.as_deref(),
        listed.and_then(|t| t.external_id.as_deref()),
    ]
    .into_iter()
    .flatten()
    .map(str::trim)
    .find(|s| !s.is_empty());
    match ext {
        Some(e) => Ok(Some(e.to_string())),
        None => Err(Error::MissingMapping(format!(
            "{doc}: payment term '{}' has no Exact payment condition (no externalId). Map it, then save the invoice",
            term.name
                .as_deref()
                .or(invoice.payment_term_name.as_deref())
                .or(listed.and_then(|t| t.name.as_deref()))
                .unwrap_or("?")
        ))),
    }
}

/// Build the Exact purchase entry. `supplier` is the supplier's Exact `Accounts.ID`.
pub fn map_invoice(
    invoice: &Invoice,
    tenant: &TenantConfig,
    lookups: &Lookups,
    supplier: ExactGuid,
    document: Option<ExactGuid>,
) -> Result<NewPurchaseEntry, Error> {
    let doc = format!("Precoro invoice {}", invoice.idn);
    let lines = entry_lines(invoice, tenant, lookups, &doc)?;
    check_totals(invoice, &lines, &doc)?;
    let payment_condition = payment_condition(invoice, lookups, &doc)?;
    let entry_date = entry_date(invoice, &doc)?;
    let sign = sign(invoice, &lines);
    Ok(NewPurchaseEntry {
        journal: tenant.exact.journal.clone(),
        supplier,
        entry_date,
        // `requiredDate` may be the due date (unconfirmed); without it Exact derives the due date
        // from the entry date and the payment condition.
        due_date: date_of(invoice.required_date.as_deref()),
        your_ref: your_ref(invoice),
        description: Some(description(invoice, &doc)),
        currency: invoice.currency.clone(),
        rate: invoice.exchange_rate(),
        payment_condition,
        payment_reference: None,
        document,
        entry_number: None,
        lines: lines.into_iter().map(|l| l.book(sign)).collect(),
    })
}

/// Which way the lines are booked. Exact books an invoice's lines positive and a credit note's
/// negative (GAccountAmountFC negative on credit notes, Type 31).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    /// The lines already point the way Exact books them.
    AsGiven,
    /// The lines are turned, all together.
    Flipped,
}

impl Sign {
    fn apply(self, d: Decimal) -> Decimal {
        match self {
            Sign::AsGiven => d,
            Sign::Flipped => -d,
        }
    }
}

/// Whether Precoro signs a credit note's amounts is unconfirmed, so the lines are turned as a
/// whole when their net sum points the other way from the document's kind (a credit note,
/// `logicType` 1 or 5, books negative). Each line keeps its sign relative to the others: a
/// discount line stays opposite to the lines it discounts, and is never booked as a charge.
fn sign(invoice: &Invoice, lines: &[EntryLine]) -> Sign {
    let net: Decimal = lines.iter().map(|l| l.net).sum();
    let books_negative = invoice.is_credit_note();
    let is_negative = net < Decimal::ZERO;
    if books_negative == is_negative {
        Sign::AsGiven
    } else {
        Sign::Flipped
    }
}

/// One invoice line mapped to Exact's accounts, its amounts in cents as Precoro gives them: the
/// totals are checked with these, and the sign is applied when the line is booked.
#[derive(Debug, Clone, PartialEq)]
struct EntryLine {
    net: Decimal,
    vat: Decimal,
    vat_code: Option<String>,
    gl_account: ExactGuid,
    cost_center: Option<String>,
    cost_unit: Option<String>,
    project: Option<ExactGuid>,
    description: Option<String>,
    quantity: Option<Decimal>,
}

impl EntryLine {
    /// The line as Exact books it, its amounts signed.
    fn book(self, sign: Sign) -> NewPurchaseEntryLine {
        NewPurchaseEntryLine {
            amount_fc: sign.apply(self.net),
            vat_code: self.vat_code,
            vat_amount_fc: Some(sign.apply(self.vat)),
            gl_account: self.gl_account,
            cost_center: self.cost_center,
            cost_unit: self.cost_unit,
            project: self.project,
            description: self.description,
            quantity: self.quantity,
        }
    }
}

/// Every line, mapped in order: the first that cannot be mapped is the error.
fn entry_lines(
    invoice: &Invoice,
    tenant: &TenantConfig,
    lookups: &Lookups,
    doc: &str,
) -> Result<Vec<EntryLine>, Error> {
    if invoice.items.is_empty() {
        return Err(Error::Invalid(format!("{doc} has no lines")));
    }
    let cf = &tenant.custom_fields;
    let gl_field = cf.gl_account.ok_or_else(|| {
        Error::MissingMapping(format!(
            "{doc}: custom_fields.gl_account is not configured for company '{}'",
            tenant.id
        ))
    })?;
    let project = project(invoice, tenant, lookups, doc)?;
    let fields = LineFields {
        gl_account: gl_field,
        cost_center: cf.cost_center,
        cost_unit: cf.cost_unit,
    };
    invoice
        .items
        .iter()
        .enumerate()
        .map(|(n, item)| entry_line(item, &line_context(doc, n, item), fields, project, lookups))
        .collect()
}

/// The invoice's project (a document field), for every line.
fn project(
    invoice: &Invoice,
    tenant: &TenantConfig,
    lookups: &Lookups,
    doc: &str,
) -> Result<Option<ExactGuid>, Error> {
    let Some(field) = tenant.custom_fields.project else {
        return Ok(None);
    };
    option_external_id(
        invoice.document_field(field),
        lookups,
        field,
        "project",
        doc,
    )?
    .map(|p| guid(&p, "project", doc))
    .transpose()
}

/// The item custom fields a line is mapped through.
#[derive(Debug, Clone, Copy)]
struct LineFields {
    gl_account: i64,
    cost_center: Option<i64>,
    cost_unit: Option<i64>,
}

/// How errors name a line: its number and name.
fn line_context(doc: &str, n: usize, item: &InvoiceItem) -> String {
    format!(
        "{doc}, line {} '{}'",
        n + 1,
        item.name
            .as_deref()
            .or(item.description.as_deref())
            .unwrap_or("")
    )
}

/// One line: GL account, cost center, cost unit, VAT code, net and VAT.
fn entry_line(
    item: &InvoiceItem,
    context: &str,
    fields: LineFields,
    project: Option<ExactGuid>,
    lookups: &Lookups,
) -> Result<EntryLine, Error> {
    let gl_field = fields.gl_account;
    let gl = option_external_id(
        item.field(gl_field),
        lookups,
        gl_field,
        "GL account",
        context,
    )?
    .ok_or_else(|| {
        Error::MissingMapping(format!(
            "{context}: no GL account chosen (item custom field {gl_field}). Choose one, then save the invoice"
        ))
    })?;
    let gl_account = guid(&gl, "GL account", context)?;
    let cost_center = dimension(item, fields.cost_center, lookups, "cost center", context)?;
    let cost_unit = dimension(item, fields.cost_unit, lookups, "cost unit", context)?;
    let vat_code = line_vat_code(item, lookups, context)?;
    let net = cents(line_net(item, context)?);
    Ok(EntryLine {
        net,
        vat: cents(line_vat(item, net)),
        vat_code,
        gl_account,
        cost_center,
        cost_unit,
        project,
        description: item.name.clone().or_else(|| item.description.clone()),
        quantity: item.quantity(),
    })
}

/// The code of the option a line chose for an optional dimension (cost center, cost unit).
fn dimension(
    item: &InvoiceItem,
    field: Option<i64>,
    lookups: &Lookups,
    what: &str,
    context: &str,
) -> Result<Option<String>, Error> {
    match field {
        Some(f) => option_external_id(item.field(f), lookups, f, what, context),
        None => Ok(None),
    }
}

/// The lines must add up to the invoice within a cent per line: never book something else.
fn check_totals(invoice: &Invoice, lines: &[EntryLine], doc: &str) -> Result<(), Error> {
    let net_total: Decimal = lines.iter().map(|l| l.net).sum();
    let vat_total: Decimal = lines.iter().map(|l| l.vat).sum();
    let tolerance = Decimal::new(1, 2) * Decimal::from(lines.len() as i64);
    let (inv_net, inv_sum) = (invoice.net_sum.abs(), invoice.sum.abs());
    // Magnitudes: the document's sign is the booking's business (`sign`), not the check's.
    if (net_total.abs() - inv_net).abs() > tolerance
        || ((net_total + vat_total).abs() - inv_sum).abs() > tolerance
    {
        return Err(Error::Invalid(format!(
            "{doc}: lines do not add up to the invoice: lines net {net_total} + VAT {vat_total} = {}, invoice net {inv_net}, total {inv_sum} (tolerance {tolerance}). Correct the lines, then save the invoice",
            net_total + vat_total
        )));
    }
    Ok(())
}

/// The date Exact books: the issue date, else the approval date, else the creation date.
fn entry_date(invoice: &Invoice, doc: &str) -> Result<NaiveDate, Error> {
    date_of(invoice.issue_date.as_deref())
        .or_else(|| date_of(invoice.approval_date.as_deref()))
        .or_else(|| date_of(invoice.create_date.as_deref()))
        .ok_or_else(|| Error::Invalid(format!("{doc} has no issue, approval or creation date")))
}

/// The supplier's invoice number, else `PRC-{idn}`.
fn your_ref(invoice: &Invoice) -> String {
    invoice
        .invoice_number
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("PRC-{}", invoice.idn))
}

/// `Precoro invoice {idn}`, with the invoice's own name when it has one, cut to 60 characters.
fn description(invoice: &Invoice, doc: &str) -> String {
    let full = match invoice
        .custom_name
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        Some(name) => format!("{doc}: {name}"),
        None => doc.to_string(),
    };
    truncate(&full, 60)
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The Exact supplier GUID stamped on the invoice's supplier.
pub fn supplier_guid(invoice: &Invoice) -> Result<ExactGuid, Error> {
    let doc = format!("Precoro invoice {}", invoice.idn);
    let supplier = invoice
        .supplier
        .as_ref()
        .ok_or_else(|| Error::Invalid(format!("{doc} has no supplier")))?;
    let name = supplier.name.as_deref().unwrap_or("?");
    let ext = supplier
        .external_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::MissingMapping(format!(
                "{doc}: supplier '{name}' (id {}) has no externalId: it is not linked to an Exact account yet",
                supplier.id.unwrap_or_default()
            ))
        })?;
    guid(ext, &format!("supplier '{name}'"), &doc)
}

#[cfg(test)]
#[path = "map_tests.rs"]
mod tests;
