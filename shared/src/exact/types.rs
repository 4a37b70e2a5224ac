//! The Exact entities the flows read and write (specs/exact-online.md §4). Unknown fields are
//! ignored; read-side fields are optional because `$select` decides what comes back.
//!
//! Amounts are `Edm.Double` on the wire and `Decimal` here (converted by [`super::odata::edm_double`]);
//! dates come as `/Date(ms)/` and are read with [`super::odata::odata_date`]; dates go out as ISO
//! `YYYY-MM-DD` (§4 "dates in").

use chrono::{DateTime, FixedOffset, NaiveDate};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::odata::{edm_double, lenient_i64, nested, odata_date, trimmed};
use crate::ids::ExactGuid;

/// An entity with the `$select` list the client asks for by default.
pub trait Entity: serde::de::DeserializeOwned {
    /// Fields requested with `$select` (§4: `*` is discouraged and some endpoints refuse it).
    const SELECT: &'static [&'static str];
}

/// Rows of a sync endpoint carry the Int64 `Timestamp` rowversion used as the cursor.
pub trait Synced: Entity {
    fn timestamp(&self) -> Option<i64>;
}

/// `current/Me`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Me {
    #[serde(rename = "CurrentDivision")]
    pub current_division: i64,
    #[serde(rename = "FullName", default)]
    pub full_name: Option<String>,
    #[serde(rename = "UserID", default)]
    pub user_id: Option<ExactGuid>,
}

impl Entity for Me {
    const SELECT: &'static [&'static str] = &["CurrentDivision", "FullName", "UserID"];
}

// ---------------------------------------------------------------------------------------------
// Purchase entries
// ---------------------------------------------------------------------------------------------

/// A purchase entry to create (POST purchaseentry/PurchaseEntries with the lines nested).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NewPurchaseEntry {
    /// Journal **code** (e.g. "70"), not its GUID.
    #[serde(rename = "Journal")]
    pub journal: String,
    #[serde(rename = "Supplier")]
    pub supplier: ExactGuid,
    /// Invoice date.
    #[serde(rename = "EntryDate")]
    pub entry_date: NaiveDate,
    /// Omitted: Exact derives it from EntryDate and the supplier's payment condition.
    #[serde(rename = "DueDate", skip_serializing_if = "Option::is_none")]
    pub due_date: Option<NaiveDate>,
    /// The supplier's invoice number: the lookup-before-create key together with `supplier`.
    #[serde(rename = "YourRef")]
    pub your_ref: String,
    #[serde(rename = "Description", skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(rename = "Currency", skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(
        rename = "Rate",
        skip_serializing_if = "Option::is_none",
        with = "edm_double::option"
    )]
    pub rate: Option<Decimal>,
    /// Payment condition **code**.
    #[serde(rename = "PaymentCondition", skip_serializing_if = "Option::is_none")]
    pub payment_condition: Option<String>,
    #[serde(rename = "PaymentReference", skip_serializing_if = "Option::is_none")]
    pub payment_reference: Option<String>,
    /// The Documents entry holding the PDF.
    #[serde(rename = "Document", skip_serializing_if = "Option::is_none")]
    pub document: Option<ExactGuid>,
    /// Auto-assigned when omitted; a deterministic number would make Exact refuse a duplicate
    /// within the journal (§5, [U]).
    #[serde(rename = "EntryNumber", skip_serializing_if = "Option::is_none")]
    pub entry_number: Option<i64>,
    #[serde(rename = "PurchaseEntryLines")]
    pub lines: Vec<NewPurchaseEntryLine>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NewPurchaseEntryLine {
    /// Net amount in the entry's currency (negative on credit notes).
    #[serde(rename = "AmountFC", with = "edm_double")]
    pub amount_fc: Decimal,
    /// VAT **code**; Exact defaults it to the GL account's VAT code.
    #[serde(rename = "VATCode", skip_serializing_if = "Option::is_none")]
    pub vat_code: Option<String>,
    #[serde(
        rename = "VATAmountFC",
        skip_serializing_if = "Option::is_none",
        with = "edm_double::option"
    )]
    pub vat_amount_fc: Option<Decimal>,
    #[serde(rename = "GLAccount")]
    pub gl_account: ExactGuid,
    /// Cost center **code**, not a GUID (§4 PurchaseEntryLines).
    #[serde(rename = "CostCenter", skip_serializing_if = "Option::is_none")]
    pub cost_center: Option<String>,
    /// Cost unit **code**, not a GUID.
    #[serde(rename = "CostUnit", skip_serializing_if = "Option::is_none")]
    pub cost_unit: Option<String>,
    #[serde(rename = "Project", skip_serializing_if = "Option::is_none")]
    pub project: Option<ExactGuid>,
    #[serde(rename = "Description", skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(
        rename = "Quantity",
        skip_serializing_if = "Option::is_none",
        with = "edm_double::option"
    )]
    pub quantity: Option<Decimal>,
}

/// A purchase entry as Exact returns it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PurchaseEntry {
    #[serde(rename = "EntryID")]
    pub entry_id: ExactGuid,
    #[serde(rename = "EntryNumber", default)]
    pub entry_number: Option<i64>,
    #[serde(rename = "AmountFC", default, with = "edm_double::option")]
    pub amount_fc: Option<Decimal>,
    #[serde(rename = "AmountDC", default, with = "edm_double::option")]
    pub amount_dc: Option<Decimal>,
    #[serde(rename = "VATAmountFC", default, with = "edm_double::option")]
    pub vat_amount_fc: Option<Decimal>,
    /// 5 Rejected, 20 Open, 50 Processed.
    #[serde(rename = "Status", default)]
    pub status: Option<i32>,
    /// 30 purchase entry, 31 purchase credit note.
    #[serde(rename = "Type", default)]
    pub entry_type: Option<i32>,
    #[serde(rename = "Supplier", default)]
    pub supplier: Option<ExactGuid>,
    #[serde(rename = "SupplierName", default)]
    pub supplier_name: Option<String>,
    #[serde(rename = "Journal", default, deserialize_with = "trimmed::deserialize")]
    pub journal: Option<String>,
    #[serde(rename = "YourRef", default)]
    pub your_ref: Option<String>,
    #[serde(rename = "Description", default)]
    pub description: Option<String>,
    #[serde(rename = "Currency", default)]
    pub currency: Option<String>,
    #[serde(rename = "PaymentCondition", default)]
    pub payment_condition: Option<String>,
    #[serde(
        rename = "EntryDate",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub entry_date: Option<DateTime<FixedOffset>>,
    #[serde(
        rename = "DueDate",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub due_date: Option<DateTime<FixedOffset>>,
    #[serde(rename = "Document", default)]
    pub document: Option<ExactGuid>,
    #[serde(rename = "Division", default)]
    pub division: Option<i64>,
    /// Present when the reply carries them (POST with `Prefer: return=representation`, or
    /// `$expand=PurchaseEntryLines`); a deferred link reads as empty.
    #[serde(
        rename = "PurchaseEntryLines",
        default,
        deserialize_with = "nested::deserialize"
    )]
    pub lines: Vec<PurchaseEntryLine>,
}

impl Entity for PurchaseEntry {
    const SELECT: &'static [&'static str] = &[
        "EntryID",
        "EntryNumber",
        "AmountFC",
        "AmountDC",
        "VATAmountFC",
        "Status",
        "Type",
        "Supplier",
        "SupplierName",
        "Journal",
        "YourRef",
        "Description",
        "Currency",
        "PaymentCondition",
        "EntryDate",
        "DueDate",
        "Document",
        "Division",
    ];
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PurchaseEntryLine {
    #[serde(rename = "ID", default)]
    pub id: Option<ExactGuid>,
    #[serde(rename = "LineNumber", default)]
    pub line_number: Option<i64>,
    #[serde(rename = "AmountFC", default, with = "edm_double::option")]
    pub amount_fc: Option<Decimal>,
    #[serde(rename = "AmountDC", default, with = "edm_double::option")]
    pub amount_dc: Option<Decimal>,
    #[serde(rename = "VATCode", default, deserialize_with = "trimmed::deserialize")]
    pub vat_code: Option<String>,
    #[serde(rename = "VATAmountFC", default, with = "edm_double::option")]
    pub vat_amount_fc: Option<Decimal>,
    #[serde(rename = "GLAccount", default)]
    pub gl_account: Option<ExactGuid>,
    #[serde(
        rename = "GLAccountCode",
        default,
        deserialize_with = "trimmed::deserialize"
    )]
    pub gl_account_code: Option<String>,
    #[serde(
        rename = "CostCenter",
        default,
        deserialize_with = "trimmed::deserialize"
    )]
    pub cost_center: Option<String>,
    #[serde(
        rename = "CostUnit",
        default,
        deserialize_with = "trimmed::deserialize"
    )]
    pub cost_unit: Option<String>,
    #[serde(rename = "Project", default)]
    pub project: Option<ExactGuid>,
    #[serde(rename = "Description", default)]
    pub description: Option<String>,
    #[serde(rename = "Quantity", default, with = "edm_double::option")]
    pub quantity: Option<Decimal>,
}

// ---------------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------------

/// crm/Accounts (also the rows of sync/CRM/Accounts).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Account {
    #[serde(rename = "ID")]
    pub id: ExactGuid,
    /// Trimmed: Exact pads it to 18 characters with leading spaces (§4).
    #[serde(rename = "Code", default, deserialize_with = "trimmed::deserialize")]
    pub code: Option<String>,
    #[serde(rename = "Name", default)]
    pub name: Option<String>,
    #[serde(rename = "IsSupplier", default)]
    pub is_supplier: Option<bool>,
    #[serde(rename = "IsSales", default)]
    pub is_sales: Option<bool>,
    #[serde(rename = "Status", default)]
    pub status: Option<String>,
    #[serde(rename = "Blocked", default)]
    pub blocked: Option<bool>,
    #[serde(rename = "VATNumber", default)]
    pub vat_number: Option<String>,
    #[serde(rename = "ChamberOfCommerce", default)]
    pub chamber_of_commerce: Option<String>,
    #[serde(
        rename = "PaymentConditionPurchase",
        default,
        deserialize_with = "trimmed::deserialize"
    )]
    pub payment_condition_purchase: Option<String>,
    #[serde(
        rename = "PurchaseVATCode",
        default,
        deserialize_with = "trimmed::deserialize"
    )]
    pub purchase_vat_code: Option<String>,
    #[serde(rename = "PurchaseCurrency", default)]
    pub purchase_currency: Option<String>,
    #[serde(rename = "Email", default)]
    pub email: Option<String>,
    #[serde(rename = "Phone", default)]
    pub phone: Option<String>,
    #[serde(rename = "AddressLine1", default)]
    pub address_line1: Option<String>,
    #[serde(rename = "AddressLine2", default)]
    pub address_line2: Option<String>,
    #[serde(rename = "AddressLine3", default)]
    pub address_line3: Option<String>,
    #[serde(rename = "Postcode", default)]
    pub postcode: Option<String>,
    #[serde(rename = "City", default)]
    pub city: Option<String>,
    #[serde(rename = "Country", default, deserialize_with = "trimmed::deserialize")]
    pub country: Option<String>,
    #[serde(
        rename = "StartDate",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub start_date: Option<DateTime<FixedOffset>>,
    #[serde(
        rename = "EndDate",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub end_date: Option<DateTime<FixedOffset>>,
    #[serde(
        rename = "Modified",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub modified: Option<DateTime<FixedOffset>>,
    /// Only on sync rows.
    #[serde(
        rename = "Timestamp",
        default,
        deserialize_with = "lenient_i64::deserialize"
    )]
    pub timestamp: Option<i64>,
}

impl Entity for Account {
    const SELECT: &'static [&'static str] = &[
        "ID",
        "Code",
        "Name",
        "IsSupplier",
        "IsSales",
        "Status",
        "Blocked",
        "VATNumber",
        "ChamberOfCommerce",
        "PaymentConditionPurchase",
        "PurchaseVATCode",
        "PurchaseCurrency",
        "Email",
        "Phone",
        "AddressLine1",
        "AddressLine2",
        "AddressLine3",
        "Postcode",
        "City",
        "Country",
        "StartDate",
        "EndDate",
        "Modified",
    ];
}

impl Synced for Account {
    fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
}

/// Fields to create (POST) or change (PUT) an account. `None` fields are not sent, so a PUT only
/// touches what is set.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AccountWrite {
    #[serde(rename = "Name", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "Code", skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(rename = "IsSupplier", skip_serializing_if = "Option::is_none")]
    pub is_supplier: Option<bool>,
    /// Customer status A/S/P/C (it describes the customer relation; leave `None` for suppliers).
    #[serde(rename = "Status", skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(rename = "Blocked", skip_serializing_if = "Option::is_none")]
    pub blocked: Option<bool>,
    #[serde(rename = "VATNumber", skip_serializing_if = "Option::is_none")]
    pub vat_number: Option<String>,
    #[serde(rename = "ChamberOfCommerce", skip_serializing_if = "Option::is_none")]
    pub chamber_of_commerce: Option<String>,
    #[serde(
        rename = "PaymentConditionPurchase",
        skip_serializing_if = "Option::is_none"
    )]
    pub payment_condition_purchase: Option<String>,
    #[serde(rename = "PurchaseVATCode", skip_serializing_if = "Option::is_none")]
    pub purchase_vat_code: Option<String>,
    #[serde(rename = "PurchaseCurrency", skip_serializing_if = "Option::is_none")]
    pub purchase_currency: Option<String>,
    #[serde(rename = "Email", skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(rename = "Phone", skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(rename = "AddressLine1", skip_serializing_if = "Option::is_none")]
    pub address_line1: Option<String>,
    #[serde(rename = "AddressLine2", skip_serializing_if = "Option::is_none")]
    pub address_line2: Option<String>,
    #[serde(rename = "Postcode", skip_serializing_if = "Option::is_none")]
    pub postcode: Option<String>,
    #[serde(rename = "City", skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(rename = "Country", skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// crm/BankAccounts: the only way to write an account's bank details (Accounts.BankAccounts is
/// read-only, §4).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NewBankAccount {
    #[serde(rename = "Account")]
    pub account: ExactGuid,
    /// IBAN or account number.
    #[serde(rename = "BankAccount")]
    pub bank_account: String,
    #[serde(rename = "BICCode", skip_serializing_if = "Option::is_none")]
    pub bic_code: Option<String>,
    #[serde(rename = "Main", skip_serializing_if = "Option::is_none")]
    pub main: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BankAccount {
    #[serde(rename = "ID")]
    pub id: ExactGuid,
    #[serde(rename = "Account", default)]
    pub account: Option<ExactGuid>,
    #[serde(rename = "BankAccount", default)]
    pub bank_account: Option<String>,
    #[serde(rename = "BICCode", default)]
    pub bic_code: Option<String>,
    #[serde(rename = "Main", default)]
    pub main: Option<bool>,
}

impl Entity for BankAccount {
    const SELECT: &'static [&'static str] = &["ID", "Account", "BankAccount", "BICCode", "Main"];
}

// ---------------------------------------------------------------------------------------------
// Reference data
// ---------------------------------------------------------------------------------------------

/// vat/VATCodes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct VatCode {
    #[serde(rename = "ID")]
    pub id: ExactGuid,
    /// Trimmed: whether codes come back padded is [U] (§6.9).
    #[serde(rename = "Code", default, deserialize_with = "trimmed::deserialize")]
    pub code: Option<String>,
    #[serde(rename = "Description", default)]
    pub description: Option<String>,
    /// As Exact sends it: a fraction (0.21) or a percentage (21) is [U] (§6.10); see
    /// [`VatCode::percent`].
    #[serde(rename = "Percentage", default, with = "edm_double::option")]
    pub percentage: Option<Decimal>,
    /// B 0%-base only, E exclusive, I inclusive, N none.
    #[serde(rename = "Type", default)]
    pub vat_type: Option<String>,
    /// B both, P purchase, S sales.
    #[serde(rename = "VATTransactionType", default)]
    pub vat_transaction_type: Option<String>,
    #[serde(rename = "IsBlocked", default)]
    pub is_blocked: Option<bool>,
    #[serde(rename = "Charged", default)]
    pub charged: Option<bool>,
}

impl VatCode {
    /// The rate as a percentage (21 for 21 %), whichever form Exact used: a value ≤ 1 is read as
    /// a fraction (§6.10 [U]; no real VAT rate is 1 % or less except 0, which is the same in both).
    pub fn percent(&self) -> Option<Decimal> {
        self.percentage.map(|p| {
            if p.abs() <= Decimal::ONE {
                (p * Decimal::ONE_HUNDRED).normalize()
            } else {
                p.normalize()
            }
        })
    }
}

impl Entity for VatCode {
    const SELECT: &'static [&'static str] = &[
        "ID",
        "Code",
        "Description",
        "Percentage",
        "Type",
        "VATTransactionType",
        "IsBlocked",
        "Charged",
    ];
}

/// cashflow/PaymentConditions.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PaymentCondition {
    #[serde(rename = "ID")]
    pub id: ExactGuid,
    #[serde(rename = "Code", default, deserialize_with = "trimmed::deserialize")]
    pub code: Option<String>,
    #[serde(rename = "Description", default)]
    pub description: Option<String>,
    #[serde(rename = "PaymentDays", default)]
    pub payment_days: Option<i32>,
    #[serde(rename = "PaymentEndOfMonths", default)]
    pub payment_end_of_months: Option<i32>,
    #[serde(rename = "DiscountPercentage", default, with = "edm_double::option")]
    pub discount_percentage: Option<Decimal>,
    #[serde(rename = "PaymentMethod", default)]
    pub payment_method: Option<String>,
}

impl Entity for PaymentCondition {
    const SELECT: &'static [&'static str] = &[
        "ID",
        "Code",
        "Description",
        "PaymentDays",
        "PaymentEndOfMonths",
        "DiscountPercentage",
        "PaymentMethod",
    ];
}

/// financial/GLAccounts (also the rows of sync/Financial/GLAccounts).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct GlAccount {
    #[serde(rename = "ID")]
    pub id: ExactGuid,
    #[serde(rename = "Code", default, deserialize_with = "trimmed::deserialize")]
    pub code: Option<String>,
    #[serde(rename = "Description", default)]
    pub description: Option<String>,
    /// 20 AR, 22 AP, 24 VAT, …
    #[serde(rename = "Type", default)]
    pub gl_type: Option<i32>,
    /// B balance, W profit and loss.
    #[serde(rename = "BalanceType", default)]
    pub balance_type: Option<String>,
    #[serde(rename = "IsBlocked", default)]
    pub is_blocked: Option<bool>,
    #[serde(rename = "VATCode", default, deserialize_with = "trimmed::deserialize")]
    pub vat_code: Option<String>,
    /// 0 optional, 1 mandatory, 2 not allowed.
    #[serde(rename = "UseCostcenter", default)]
    pub use_costcenter: Option<i32>,
    #[serde(rename = "UseCostunit", default)]
    pub use_costunit: Option<i32>,
    #[serde(
        rename = "Timestamp",
        default,
        deserialize_with = "lenient_i64::deserialize"
    )]
    pub timestamp: Option<i64>,
}

impl Entity for GlAccount {
    const SELECT: &'static [&'static str] = &[
        "ID",
        "Code",
        "Description",
        "Type",
        "BalanceType",
        "IsBlocked",
        "VATCode",
        "UseCostcenter",
        "UseCostunit",
    ];
}

impl Synced for GlAccount {
    fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
}

/// hrm/Costcenters and hrm/Costunits share their shape.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CostDimension {
    #[serde(rename = "ID")]
    pub id: ExactGuid,
    #[serde(rename = "Code", default, deserialize_with = "trimmed::deserialize")]
    pub code: Option<String>,
    #[serde(rename = "Description", default)]
    pub description: Option<String>,
    #[serde(rename = "Active", default)]
    pub active: Option<bool>,
    #[serde(
        rename = "EndDate",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub end_date: Option<DateTime<FixedOffset>>,
}

impl Entity for CostDimension {
    const SELECT: &'static [&'static str] = &["ID", "Code", "Description", "Active", "EndDate"];
}

pub type CostCenter = CostDimension;
pub type CostUnit = CostDimension;

/// project/Projects (also the rows of sync/Project/Projects).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Project {
    #[serde(rename = "ID")]
    pub id: ExactGuid,
    #[serde(rename = "Code", default, deserialize_with = "trimmed::deserialize")]
    pub code: Option<String>,
    #[serde(rename = "Description", default)]
    pub description: Option<String>,
    /// 1 Campaign, 2 Fixed price, 3 Time & material, 4 Non-billable, 5 Prepaid.
    #[serde(rename = "Type", default)]
    pub project_type: Option<i32>,
    #[serde(rename = "Account", default)]
    pub account: Option<ExactGuid>,
    #[serde(
        rename = "StartDate",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub start_date: Option<DateTime<FixedOffset>>,
    #[serde(
        rename = "EndDate",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub end_date: Option<DateTime<FixedOffset>>,
    #[serde(rename = "BlockPurchasing", default)]
    pub block_purchasing: Option<bool>,
    #[serde(rename = "BlockEntry", default)]
    pub block_entry: Option<bool>,
    #[serde(
        rename = "Timestamp",
        default,
        deserialize_with = "lenient_i64::deserialize"
    )]
    pub timestamp: Option<i64>,
}

impl Entity for Project {
    const SELECT: &'static [&'static str] = &[
        "ID",
        "Code",
        "Description",
        "Type",
        "Account",
        "StartDate",
        "EndDate",
        "BlockPurchasing",
        "BlockEntry",
    ];
}

impl Synced for Project {
    fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
}

/// financial/Journals.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Journal {
    #[serde(rename = "ID")]
    pub id: ExactGuid,
    /// The value `PurchaseEntries.Journal` expects.
    #[serde(rename = "Code", default, deserialize_with = "trimmed::deserialize")]
    pub code: Option<String>,
    #[serde(rename = "Description", default)]
    pub description: Option<String>,
    /// 22 Purchase, 23 Received return invoice, 12 Bank, 90 General.
    #[serde(rename = "Type", default)]
    pub journal_type: Option<i32>,
    #[serde(rename = "Currency", default)]
    pub currency: Option<String>,
    #[serde(rename = "AllowVariableCurrency", default)]
    pub allow_variable_currency: Option<bool>,
    #[serde(rename = "IsBlocked", default)]
    pub is_blocked: Option<bool>,
}

impl Entity for Journal {
    const SELECT: &'static [&'static str] = &[
        "ID",
        "Code",
        "Description",
        "Type",
        "Currency",
        "AllowVariableCurrency",
        "IsBlocked",
    ];
}

// ---------------------------------------------------------------------------------------------
// Payments
// ---------------------------------------------------------------------------------------------

/// cashflow/Payments: one row per supplier payment term.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Payment {
    #[serde(rename = "ID")]
    pub id: ExactGuid,
    /// The purchase entry (`PurchaseEntries.EntryID`).
    #[serde(rename = "TransactionEntryID", default)]
    pub transaction_entry_id: Option<ExactGuid>,
    #[serde(rename = "EntryID", default)]
    pub entry_id: Option<ExactGuid>,
    /// 20 open, 30 selected for payment, 40 processed, 50 matched.
    #[serde(rename = "Status", default)]
    pub status: Option<i32>,
    #[serde(rename = "AmountDC", default, with = "edm_double::option")]
    pub amount_dc: Option<Decimal>,
    #[serde(rename = "AmountFC", default, with = "edm_double::option")]
    pub amount_fc: Option<Decimal>,
    #[serde(rename = "TransactionAmountFC", default, with = "edm_double::option")]
    pub transaction_amount_fc: Option<Decimal>,
    #[serde(rename = "EntryNumber", default)]
    pub entry_number: Option<i64>,
    #[serde(rename = "InvoiceNumber", default)]
    pub invoice_number: Option<i64>,
    #[serde(rename = "YourRef", default)]
    pub your_ref: Option<String>,
    #[serde(rename = "Account", default)]
    pub account: Option<ExactGuid>,
    #[serde(rename = "PaymentMethod", default)]
    pub payment_method: Option<String>,
    #[serde(
        rename = "DueDate",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub due_date: Option<DateTime<FixedOffset>>,
    /// When it stopped being outstanding.
    #[serde(
        rename = "EndDate",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub end_date: Option<DateTime<FixedOffset>>,
}

impl Payment {
    /// Paid per the inferred rule of §4 "Detecting paid" [U]: Status 40/50, or a set EndDate.
    pub fn is_paid(&self) -> bool {
        matches!(self.status, Some(40) | Some(50)) || self.end_date.is_some()
    }
}

impl Entity for Payment {
    const SELECT: &'static [&'static str] = &[
        "ID",
        "TransactionEntryID",
        "EntryID",
        "Status",
        "AmountDC",
        "AmountFC",
        "TransactionAmountFC",
        "EntryNumber",
        "InvoiceNumber",
        "YourRef",
        "Account",
        "PaymentMethod",
        "DueDate",
        "EndDate",
    ];
}

/// Rows of sync/Cashflow/PaymentTerms.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PaymentTerm {
    #[serde(rename = "ID")]
    pub id: ExactGuid,
    /// 22 payable, 20 receivable.
    #[serde(rename = "LineType", default)]
    pub line_type: Option<i32>,
    #[serde(rename = "TransactionEntryID", default)]
    pub transaction_entry_id: Option<ExactGuid>,
    #[serde(rename = "EntryID", default)]
    pub entry_id: Option<ExactGuid>,
    #[serde(rename = "Status", default)]
    pub status: Option<i32>,
    #[serde(rename = "AmountDC", default, with = "edm_double::option")]
    pub amount_dc: Option<Decimal>,
    #[serde(rename = "AmountFC", default, with = "edm_double::option")]
    pub amount_fc: Option<Decimal>,
    #[serde(rename = "EntryNumber", default)]
    pub entry_number: Option<i64>,
    #[serde(rename = "InvoiceNumber", default)]
    pub invoice_number: Option<i64>,
    #[serde(rename = "YourRef", default)]
    pub your_ref: Option<String>,
    #[serde(rename = "Account", default)]
    pub account: Option<ExactGuid>,
    /// 1 N/A, 2 review, 3 approval, 4 approved, 5 rejected; null when the feature is off.
    #[serde(rename = "ApprovalStatus", default)]
    pub approval_status: Option<i32>,
    #[serde(rename = "IsFullyPaid", default)]
    pub is_fully_paid: Option<bool>,
    #[serde(
        rename = "DueDate",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub due_date: Option<DateTime<FixedOffset>>,
    #[serde(
        rename = "EndDate",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub end_date: Option<DateTime<FixedOffset>>,
    #[serde(
        rename = "LastPaymentDate",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub last_payment_date: Option<DateTime<FixedOffset>>,
    #[serde(
        rename = "Timestamp",
        default,
        deserialize_with = "lenient_i64::deserialize"
    )]
    pub timestamp: Option<i64>,
}

impl PaymentTerm {
    /// LineType 22: a payable (supplier) term.
    pub const PAYABLE: i32 = 22;

    /// Same rule as [`Payment::is_paid`] plus `IsFullyPaid` [U].
    pub fn is_paid(&self) -> bool {
        matches!(self.status, Some(40) | Some(50))
            || self.end_date.is_some()
            || self.is_fully_paid == Some(true)
    }
}

impl Entity for PaymentTerm {
    const SELECT: &'static [&'static str] = &[
        "ID",
        "LineType",
        "TransactionEntryID",
        "EntryID",
        "Status",
        "AmountDC",
        "AmountFC",
        "EntryNumber",
        "InvoiceNumber",
        "YourRef",
        "Account",
        "ApprovalStatus",
        "IsFullyPaid",
        "DueDate",
        "EndDate",
        "LastPaymentDate",
        "Timestamp",
    ];
}

impl Synced for PaymentTerm {
    fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
}

/// Rows of sync/Deleted (kept two months by Exact).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Deleted {
    #[serde(rename = "EntityKey")]
    pub entity_key: ExactGuid,
    #[serde(rename = "EntityType", default)]
    pub entity_type: Option<i32>,
    #[serde(
        rename = "DeletedDate",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    pub deleted_date: Option<DateTime<FixedOffset>>,
    #[serde(
        rename = "Timestamp",
        default,
        deserialize_with = "lenient_i64::deserialize"
    )]
    pub timestamp: Option<i64>,
}

impl Deleted {
    /// `EntityType` values (§4 "Sync APIs").
    pub const TRANSACTION_LINES: i32 = 1;
    pub const ACCOUNTS: i32 = 2;
    pub const GL_ACCOUNTS: i32 = 7;
    pub const PAYMENT_TERMS: i32 = 10;
    pub const PROJECTS: i32 = 21;
}

impl Entity for Deleted {
    const SELECT: &'static [&'static str] =
        &["EntityKey", "EntityType", "DeletedDate", "Timestamp"];
}

impl Synced for Deleted {
    fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
}

// ---------------------------------------------------------------------------------------------
// Documents and webhooks
// ---------------------------------------------------------------------------------------------

/// documents/Documents.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Document {
    #[serde(rename = "ID")]
    pub id: ExactGuid,
    #[serde(rename = "Subject", default)]
    pub subject: Option<String>,
    #[serde(rename = "Type", default)]
    pub doc_type: Option<i32>,
    #[serde(rename = "Account", default)]
    pub account: Option<ExactGuid>,
}

impl Entity for Document {
    const SELECT: &'static [&'static str] = &["ID", "Subject", "Type", "Account"];
}

/// documents/DocumentAttachments.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct DocumentAttachment {
    #[serde(rename = "ID")]
    pub id: ExactGuid,
    #[serde(rename = "Document", default)]
    pub document: Option<ExactGuid>,
    #[serde(rename = "FileName", default)]
    pub file_name: Option<String>,
    #[serde(rename = "FileSize", default, with = "edm_double::option")]
    pub file_size: Option<Decimal>,
}

/// Without `Attachment`: listing a document's files never downloads them.
impl Entity for DocumentAttachment {
    const SELECT: &'static [&'static str] = &["ID", "Document", "FileName", "FileSize"];
}

/// webhooks/WebhookSubscriptions.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct WebhookSubscription {
    #[serde(rename = "ID")]
    pub id: ExactGuid,
    #[serde(rename = "Topic", default)]
    pub topic: Option<String>,
    #[serde(rename = "CallbackURL", default)]
    pub callback_url: Option<String>,
    #[serde(rename = "Description", default)]
    pub description: Option<String>,
    #[serde(rename = "Division", default)]
    pub division: Option<i64>,
    #[serde(rename = "ClientID", default)]
    pub client_id: Option<ExactGuid>,
}

impl Entity for WebhookSubscription {
    const SELECT: &'static [&'static str] = &[
        "ID",
        "Topic",
        "CallbackURL",
        "Description",
        "Division",
        "ClientID",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> ExactGuid {
        s.parse().unwrap()
    }

    #[test]
    fn new_purchase_entry_serialises_as_exact_expects() {
        let e = NewPurchaseEntry {
            journal: "70".into(),
            supplier: g("11111111-1111-1111-1111-111111111111"),
            entry_date: NaiveDate::from_ymd_opt(2026, 6, 17).unwrap(),
            due_date: None,
            your_ref: "INV-1".into(),
            description: Some("PO 12".into()),
            currency: Some("EUR".into()),
            rate: None,
            payment_condition: Some("30".into()),
            payment_reference: None,
            document: None,
            entry_number: None,
            lines: vec![NewPurchaseEntryLine {
                amount_fc: "100.10".parse().unwrap(),
                vat_code: Some("2".into()),
                vat_amount_fc: Some("21.02".parse().unwrap()),
                gl_account: g("22222222-2222-2222-2222-222222222222"),
                cost_center: Some("CC1".into()),
                cost_unit: None,
                project: None,
                description: Some("Paper".into()),
                quantity: Some("2".parse().unwrap()),
            }],
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "Journal": "70",
                "Supplier": "11111111-1111-1111-1111-111111111111",
                "EntryDate": "2026-06-17",
                "YourRef": "INV-1",
                "Description": "PO 12",
                "Currency": "EUR",
                "PaymentCondition": "30",
                "PurchaseEntryLines": [{
                    "AmountFC": 100.1,
                    "VATCode": "2",
                    "VATAmountFC": 21.02,
                    "GLAccount": "22222222-2222-2222-2222-222222222222",
                    "CostCenter": "CC1",
                    "Description": "Paper",
                    "Quantity": 2.0
                }]
            })
        );
    }

    #[test]
    fn purchase_entry_reads_exact_reply() {
        let body = br#"{"d":{"__metadata":{"uri":"x","type":"Exact.Web.Api.Models.PurchaseEntry"},
            "EntryID":"33333333-3333-3333-3333-333333333333","EntryNumber":26700001,
            "AmountFC":121.12,"Status":20,"Journal":"70","YourRef":"INV-1",
            "EntryDate":"/Date(1781654400000)/","Unknown":1,
            "PurchaseEntryLines":{"results":[{"ID":"44444444-4444-4444-4444-444444444444","AmountFC":100.1,"VATCode":"2  ","GLAccountCode":"  4000"}]}}}"#;
        let e: PurchaseEntry = super::super::odata::parse_single(body).unwrap().unwrap();
        assert_eq!(e.entry_number, Some(26700001));
        assert_eq!(e.amount_fc, Some("121.12".parse().unwrap()));
        assert_eq!(
            super::super::odata::to_date(&e.entry_date.unwrap()),
            NaiveDate::from_ymd_opt(2026, 6, 17).unwrap()
        );
        assert_eq!(e.lines.len(), 1);
        assert_eq!(e.lines[0].vat_code.as_deref(), Some("2"));
        assert_eq!(e.lines[0].gl_account_code.as_deref(), Some("4000"));
    }

    #[test]
    fn vat_percent_reads_fraction_or_percentage() {
        let mut v = VatCode {
            id: ExactGuid::new_v4(),
            code: Some("2".into()),
            description: None,
            percentage: Some("0.21".parse().unwrap()),
            vat_type: None,
            vat_transaction_type: None,
            is_blocked: None,
            charged: None,
        };
        assert_eq!(v.percent(), Some("21".parse().unwrap()));
        v.percentage = Some("21".parse().unwrap());
        assert_eq!(v.percent(), Some("21".parse().unwrap()));
        v.percentage = Some(Decimal::ZERO);
        assert_eq!(v.percent(), Some(Decimal::ZERO));
    }

    #[test]
    fn account_code_is_trimmed() {
        let a: Account = serde_json::from_str(
            r#"{"ID":"55555555-5555-5555-5555-555555555555","Code":"                25","Name":"Acme","Timestamp":987}"#,
        )
        .unwrap();
        assert_eq!(a.code.as_deref(), Some("25"));
        assert_eq!(a.timestamp(), Some(987));
    }
}
