//! Precoro invoice → Exact purchase entry: the mapping, the export decision and the totals check.
//! Pure functions, so every rule is tested without a network.
//!
//! Precoro's `externalId` fields are the mapping table (DESIGN.md): reference sync stamps the
//! Exact code or GUID on every tax, payment term and custom-field option, and supplier sync stamps
//! `Accounts.ID` on suppliers. A missing stamp is a permanent error naming the Precoro field and
//! value, so an operator can fix the data and replay.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use shared::config::TenantConfig;
use shared::error::Error;
use shared::exact::types::{NewPurchaseEntry, NewPurchaseEntryLine};
use shared::ids::ExactGuid;
use shared::precoro::{CustomFieldValue, Invoice, InvoiceItem};

/// Precoro status 2: approved (specs/precoro.md §3).
pub const APPROVED: i64 = 2;

/// Why an invoice is not exported now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    NotApproved(i64),
    AlreadyExported(String),
    SplitChild(i64),
    ExportConditionFalse,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NotApproved(s) => write!(f, "not approved (status {s})"),
            Skip::AlreadyExported(id) => write!(f, "already exported as Exact entry {id}"),
            Skip::SplitChild(parent) => write!(
                f,
                "split-cost child of invoice {parent}; only the base document is exported"
            ),
            Skip::ExportConditionFalse => f.write_str("export condition not met"),
        }
    }
}

/// Should this invoice go to Exact now?
pub fn decide(invoice: &Invoice, tenant: &TenantConfig) -> Result<(), Skip> {
    if let Some(ext) = invoice
        .external_id
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    {
        return Err(Skip::AlreadyExported(ext.to_string()));
    }
    if invoice.status != APPROVED {
        return Err(Skip::NotApproved(invoice.status));
    }
    // Split-cost: export only the base document, the one without parentData.idn (specs §3).
    if let Some(parent) = invoice.parent_data.as_ref().and_then(|p| p.idn) {
        return Err(Skip::SplitChild(parent));
    }
    if let Some(cond) = &tenant.flows.invoices.export_condition {
        let value = field_value(&invoice.data_document_custom_fields, cond.field_id);
        if value.as_deref().map(str::trim) != Some(cond.value.trim()) {
            return Err(Skip::ExportConditionFalse);
        }
    }
    Ok(())
}

fn find_field(values: &[CustomFieldValue], field_id: i64) -> Option<&CustomFieldValue> {
    values
        .iter()
        .find(|v| v.field.as_ref().and_then(|f| f.id) == Some(field_id))
}

/// The shown value of a custom field: the chosen option's name, or the plain value.
fn field_value(values: &[CustomFieldValue], field_id: i64) -> Option<String> {
    let v = find_field(values, field_id)?;
    v.option
        .as_ref()
        .and_then(|o| o.name.clone())
        .or_else(|| v.value.clone())
}

fn field_name(v: &CustomFieldValue, fallback: &str) -> String {
    v.field
        .as_ref()
        .and_then(|f| f.name.clone())
        .unwrap_or_else(|| fallback.to_string())
}

/// The externalId of the option chosen for `field_id`; `Ok(None)` when the field is not set.
fn option_external_id(
    values: &[CustomFieldValue],
    field_id: i64,
    what: &str,
    context: &str,
) -> Result<Option<String>, Error> {
    let Some(v) = find_field(values, field_id) else {
        return Ok(None);
    };
    let Some(option) = &v.option else {
        return Ok(None);
    };
    match option
        .external_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(ext) => Ok(Some(ext.to_string())),
        None => Err(Error::MissingMapping(format!(
            "{context}: option '{}' of custom field '{}' ({what}) has no externalId; sync {what}s from Exact or set it, then replay",
            option
                .name
                .as_deref()
                .or(option.code.as_deref())
                .unwrap_or("?"),
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

/// Dates arrive as ISO date-times with an offset, or plain dates; the calendar date is what Exact books.
pub fn date_of(value: Option<&str>) -> Option<NaiveDate> {
    let v = value?.trim();
    let day = v.get(..10)?;
    NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()
}

fn is_credit_note(invoice: &Invoice) -> bool {
    matches!(invoice.logic_type, 1 | 5)
}

/// Round half away from zero to cents.
fn cents(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
}

/// A line's net amount: `netSum` when Precoro gives it, else quantity × price.
fn line_net(item: &InvoiceItem) -> Decimal {
    item.net_sum.unwrap_or(item.quantity * item.price)
}

/// A line's VAT: `taxAmount` when given, else `sum - netSum`, else net × the tax percent.
fn line_vat(item: &InvoiceItem) -> Decimal {
    if let Some(t) = item.tax_amount {
        return t;
    }
    if let (Some(sum), Some(net)) = (item.sum, item.net_sum) {
        return sum - net;
    }
    let pct = item
        .tax
        .as_ref()
        .and_then(|t| t.percent)
        .unwrap_or_default();
    cents(line_net(item) * pct / Decimal::from(100))
}

/// Build the Exact purchase entry. `supplier` is the supplier's Exact `Accounts.ID`.
pub fn map_invoice(
    invoice: &Invoice,
    tenant: &TenantConfig,
    supplier: ExactGuid,
    document: Option<ExactGuid>,
) -> Result<NewPurchaseEntry, Error> {
    let doc = format!("Precoro invoice {}", invoice.idn);
    let cf = &tenant.custom_fields;
    // Credit notes post with negative amounts (Exact: GAccountAmountFC negative on credit notes,
    // Type 31). Whether Precoro already signs credit-note amounts is unconfirmed, so take the
    // magnitude and apply the sign ourselves.
    let sign = if is_credit_note(invoice) {
        Decimal::NEGATIVE_ONE
    } else {
        Decimal::ONE
    };
    let signed = |d: Decimal| d.abs() * sign;

    if invoice.items.is_empty() {
        return Err(Error::Invalid(format!("{doc} has no lines")));
    }
    let gl_field = cf.gl_account.ok_or_else(|| {
        Error::MissingMapping(format!(
            "{doc}: custom_fields.gl_account is not configured for company '{}'",
            tenant.id
        ))
    })?;
    let project = match cf.project {
        Some(field) => {
            option_external_id(&invoice.data_document_custom_fields, field, "project", &doc)?
                .map(|p| guid(&p, "project", &doc))
                .transpose()?
        }
        None => None,
    };

    let mut lines = Vec::with_capacity(invoice.items.len());
    let (mut net_total, mut vat_total) = (Decimal::ZERO, Decimal::ZERO);
    for (n, item) in invoice.items.iter().enumerate() {
        let context = format!(
            "{doc}, line {} '{}'",
            n + 1,
            item.name
                .as_deref()
                .or(item.description.as_deref())
                .unwrap_or("")
        );
        let gl = option_external_id(
            &item.data_item_custom_fields,
            gl_field,
            "GL account",
            &context,
        )?
        .ok_or_else(|| {
            Error::MissingMapping(format!(
                "{context}: no GL account chosen (item custom field {gl_field})"
            ))
        })?;
        let gl_account = guid(&gl, "GL account", &context)?;
        let cost_center = match cf.cost_center {
            Some(f) => {
                option_external_id(&item.data_item_custom_fields, f, "cost center", &context)?
            }
            None => None,
        };
        let cost_unit = match cf.cost_unit {
            Some(f) => option_external_id(&item.data_item_custom_fields, f, "cost unit", &context)?,
            None => None,
        };
        let vat_code = match &item.tax {
            Some(tax) => Some(
                tax.external_id
                    .as_deref()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        Error::MissingMapping(format!(
                            "{context}: tax '{}' has no externalId (the Exact VAT code); sync taxes from Exact or set it, then replay",
                            tax.name.as_deref().unwrap_or("?")
                        ))
                    })?,
            ),
            None => None,
        };
        let net = cents(line_net(item));
        let vat = cents(line_vat(item));
        net_total += net;
        vat_total += vat;
        lines.push(NewPurchaseEntryLine {
            amount_fc: signed(net),
            vat_code,
            vat_amount_fc: Some(signed(vat)),
            gl_account,
            cost_center,
            cost_unit,
            project,
            description: item.name.clone().or_else(|| item.description.clone()),
            quantity: Some(item.quantity),
        });
    }

    // Totals must reconcile with the invoice within a cent per line; never book something else.
    let tolerance = Decimal::new(1, 2) * Decimal::from(invoice.items.len() as i64);
    let (inv_net, inv_sum) = (invoice.net_sum.abs(), invoice.sum.abs());
    if (net_total - inv_net).abs() > tolerance
        || (net_total + vat_total - inv_sum).abs() > tolerance
    {
        return Err(Error::Invalid(format!(
            "{doc}: lines do not add up to the invoice: lines net {net_total} + VAT {vat_total} = {}, invoice net {inv_net}, total {inv_sum} (tolerance {tolerance})",
            net_total + vat_total
        )));
    }

    let payment_condition = match &invoice.payment_term {
        Some(term) => Some(
            term.external_id
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::MissingMapping(format!(
                        "{doc}: payment term '{}' has no externalId (the Exact payment condition code); sync payment terms or set it, then replay",
                        term.name.as_deref().unwrap_or("?")
                    ))
                })?,
        ),
        None => None,
    };
    let entry_date = date_of(invoice.issue_date.as_deref())
        .or_else(|| date_of(invoice.approval_date.as_deref()))
        .or_else(|| date_of(invoice.create_date.as_deref()))
        .ok_or_else(|| Error::Invalid(format!("{doc} has no issue, approval or creation date")))?;
    let your_ref = invoice
        .invoice_number
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("PRC-{}", invoice.idn));
    let description = match invoice
        .custom_name
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        Some(name) => format!("{doc}: {name}"),
        None => doc.clone(),
    };
    Ok(NewPurchaseEntry {
        journal: tenant.exact.journal.clone(),
        supplier,
        entry_date,
        // `requiredDate` may be the due date (unconfirmed); without it Exact derives the due date
        // from the entry date and the payment condition.
        due_date: date_of(invoice.required_date.as_deref()),
        your_ref,
        description: Some(truncate(&description, 60)),
        currency: invoice.currency.clone(),
        rate: invoice.exchange_rate,
        payment_condition,
        payment_reference: None,
        document,
        entry_number: None,
        lines,
    })
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
