//! Endpoints and their fields (spec §4 "Entities"). A field not listed here is unknown to the
//! simulator: `$filter`/`$select` on it and POSTing it fail with 400, as Exact's OData layer does.

use super::odata::{Edm, Fields};

use Edm::*;

/// Where an endpoint's rows live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Accounts,
    BankAccounts,
    PurchaseEntries,
    PurchaseEntryLines,
    Payments,
    GlAccounts,
    VatCodes,
    PaymentConditions,
    CostCenters,
    CostUnits,
    Projects,
    Journals,
    Documents,
    DocumentAttachments,
    WebhookSubscriptions,
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 60 rows per page.
    Standard,
    /// `/sync/…`: 1000 rows per page, ordered by Timestamp, only `Timestamp gt NL` allowed.
    Sync,
}

pub struct Endpoint {
    pub path: &'static str,
    pub table: Table,
    pub kind: Kind,
    pub key: &'static str,
    pub type_name: &'static str,
    pub fields: Fields,
    pub get: bool,
    pub post: bool,
    pub put: bool,
    pub delete: bool,
    /// Since 2021-07-01 list GETs on endpoints with a sync twin need a `$filter` (spec §4 "Mandatory
    /// filtering"). Which fields satisfy it is [U] (spec §6 q7), so any filter does.
    pub mandatory_filter: bool,
}

impl Endpoint {
    pub fn page_size(&self) -> usize {
        match self.kind {
            Kind::Standard => 60,
            Kind::Sync => 1000,
        }
    }
}

pub const ACCOUNT_FIELDS: Fields = &[
    ("ID", Guid),
    ("AddressLine1", String),
    ("AddressLine2", String),
    ("AddressLine3", String),
    ("BankAccounts", Nav),
    ("Blocked", Boolean),
    ("ChamberOfCommerce", String),
    ("City", String),
    ("Code", String),
    ("Country", String),
    ("Created", DateTime),
    ("Division", Int32),
    ("Email", String),
    ("EndDate", DateTime),
    ("IsSales", Boolean),
    ("IsSupplier", Boolean),
    ("Modified", DateTime),
    ("Name", String),
    ("PaymentConditionPurchase", String),
    ("PaymentConditionPurchaseDescription", String),
    ("Phone", String),
    ("Postcode", String),
    ("PurchaseCurrency", String),
    ("PurchaseVATCode", String),
    ("StartDate", DateTime),
    ("Status", String),
    ("VATNumber", String),
    ("Website", String),
];

const ACCOUNT_SYNC_FIELDS: Fields = &[
    ("ID", Guid),
    ("AddressLine1", String),
    ("AddressLine2", String),
    ("AddressLine3", String),
    ("Blocked", Boolean),
    ("ChamberOfCommerce", String),
    ("City", String),
    ("Code", String),
    ("Country", String),
    ("Created", DateTime),
    ("Division", Int32),
    ("Email", String),
    ("EndDate", DateTime),
    ("IsSales", Boolean),
    ("IsSupplier", Boolean),
    ("Modified", DateTime),
    ("Name", String),
    ("PaymentConditionPurchase", String),
    ("PaymentConditionPurchaseDescription", String),
    ("Phone", String),
    ("Postcode", String),
    ("PurchaseCurrency", String),
    ("PurchaseVATCode", String),
    ("StartDate", DateTime),
    ("Status", String),
    ("Timestamp", Int64),
    ("VATNumber", String),
    ("Website", String),
];

const BANK_ACCOUNT_FIELDS: Fields = &[
    ("ID", Guid),
    ("Account", Guid),
    ("AccountName", String),
    ("BankAccount", String),
    ("BankAccountHolderName", String),
    ("BICCode", String),
    ("Created", DateTime),
    ("Description", String),
    ("Division", Int32),
    ("IBAN", String),
    ("Main", Boolean),
    ("Modified", DateTime),
];

pub const ENTRY_FIELDS: Fields = &[
    ("EntryID", Guid),
    ("AmountDC", Double),
    ("AmountFC", Double),
    ("Created", DateTime),
    ("Currency", String),
    ("Description", String),
    ("Division", Int32),
    ("Document", Guid),
    ("DueDate", DateTime),
    ("EntryDate", DateTime),
    ("EntryNumber", Int32),
    ("ExternalLinkReference", String),
    ("GAccountAmountFC", Double),
    ("InvoiceNumber", Int32),
    ("Journal", String),
    ("JournalDescription", String),
    ("Modified", DateTime),
    ("OrderNumber", Int32),
    ("PaymentCondition", String),
    ("PaymentConditionDescription", String),
    ("PaymentConditionPaymentMethod", String),
    ("PaymentReference", String),
    ("PurchaseEntryLines", Nav),
    ("Rate", Double),
    ("ReportingPeriod", Int16),
    ("ReportingYear", Int16),
    ("Reversal", Boolean),
    ("Status", Int16),
    ("StatusDescription", String),
    ("Supplier", Guid),
    ("SupplierName", String),
    ("Type", Int32),
    ("TypeDescription", String),
    ("VATAmountDC", Double),
    ("VATAmountFC", Double),
    ("YourRef", String),
];

/// Writable on POST (spec §4); other known fields are read-only and ignored when sent.
pub const ENTRY_WRITABLE: &[&str] = &[
    "Supplier",
    "Journal",
    "EntryDate",
    "DueDate",
    "YourRef",
    "PaymentReference",
    "ExternalLinkReference",
    "Document",
    "EntryNumber",
    "InvoiceNumber",
    "OrderNumber",
    "Currency",
    "Rate",
    "VATAmountFC",
    "GAccountAmountFC",
    "Description",
    "PaymentCondition",
    "ReportingYear",
    "ReportingPeriod",
    "Reversal",
    "PurchaseEntryLines",
];

pub const LINE_FIELDS: Fields = &[
    ("ID", Guid),
    ("AmountDC", Double),
    ("AmountFC", Double),
    ("CostCenter", String),
    ("CostCenterDescription", String),
    ("CostUnit", String),
    ("CostUnitDescription", String),
    ("Description", String),
    ("Division", Int32),
    ("EntryID", Guid),
    ("From", DateTime),
    ("GLAccount", Guid),
    ("GLAccountCode", String),
    ("GLAccountDescription", String),
    ("LineNumber", Int32),
    ("Notes", String),
    ("Project", Guid),
    ("ProjectCode", String),
    ("ProjectDescription", String),
    ("Quantity", Double),
    ("To", DateTime),
    ("Type", Int32),
    ("VATAmountDC", Double),
    ("VATAmountFC", Double),
    ("VATBaseAmountFC", Double),
    ("VATCode", String),
    ("VATCodeDescription", String),
    ("VATNonDeductiblePercentage", Double),
    ("VATPercentage", Double),
];

pub const LINE_WRITABLE: &[&str] = &[
    "AmountFC",
    "CostCenter",
    "CostUnit",
    "Description",
    "From",
    "GLAccount",
    "Notes",
    "Project",
    "Quantity",
    "To",
    "VATAmountFC",
    "VATBaseAmountFC",
    "VATCode",
    "VATNonDeductiblePercentage",
    "VATPercentage",
];

const PAYMENT_FIELDS: Fields = &[
    ("ID", Guid),
    ("Account", Guid),
    ("AccountCode", String),
    ("AccountName", String),
    ("AmountDC", Double),
    ("AmountFC", Double),
    ("Created", DateTime),
    ("Currency", String),
    ("Description", String),
    ("Division", Int32),
    ("DueDate", DateTime),
    ("EndDate", DateTime),
    ("EndPeriod", Int16),
    ("EndYear", Int16),
    ("EntryDate", DateTime),
    ("EntryID", Guid),
    ("EntryNumber", Int32),
    ("InvoiceDate", DateTime),
    ("InvoiceNumber", Int32),
    ("Journal", String),
    ("JournalDescription", String),
    ("Modified", DateTime),
    ("PaymentCondition", String),
    ("PaymentMethod", String),
    ("PaymentReference", String),
    ("Status", Int16),
    ("TransactionAmountDC", Double),
    ("TransactionAmountFC", Double),
    ("TransactionEntryID", Guid),
    ("TransactionID", Guid),
    ("TransactionIsReversal", Boolean),
    ("YourRef", String),
];

const PAYMENT_TERM_FIELDS: Fields = &[
    ("ID", Guid),
    ("Account", Guid),
    ("AccountCode", String),
    ("AccountName", String),
    ("AmountDC", Double),
    ("AmountFC", Double),
    ("ApprovalStatus", Int16),
    ("Created", DateTime),
    ("Currency", String),
    ("Description", String),
    ("Division", Int32),
    ("DueDate", DateTime),
    ("EndDate", DateTime),
    ("EndPeriod", Int16),
    ("EndYear", Int16),
    ("EntryDate", DateTime),
    ("EntryID", Guid),
    ("EntryNumber", Int32),
    ("InvoiceDate", DateTime),
    ("InvoiceNumber", Int32),
    ("IsFullyPaid", Boolean),
    ("Journal", String),
    ("JournalDescription", String),
    ("LastPaymentDate", DateTime),
    ("LineType", Int16),
    ("Modified", DateTime),
    ("PaymentCondition", String),
    ("PaymentMethod", String),
    ("PaymentReference", String),
    ("Status", Int16),
    ("Timestamp", Int64),
    ("TransactionAmountDC", Double),
    ("TransactionAmountFC", Double),
    ("TransactionEntryID", Guid),
    ("TransactionID", Guid),
    ("TransactionIsReversal", Boolean),
    ("YourRef", String),
];

const GL_FIELDS: Fields = &[
    ("ID", Guid),
    ("BalanceType", String),
    ("Code", String),
    ("Created", DateTime),
    ("Description", String),
    ("Division", Int32),
    ("IsBlocked", Boolean),
    ("Modified", DateTime),
    ("Type", Int32),
    ("TypeDescription", String),
    ("UseCostcenter", Int16),
    ("UseCostunit", Int16),
    ("VATCode", String),
];

const GL_SYNC_FIELDS: Fields = &[
    ("ID", Guid),
    ("BalanceType", String),
    ("Code", String),
    ("Created", DateTime),
    ("Description", String),
    ("Division", Int32),
    ("IsBlocked", Boolean),
    ("Modified", DateTime),
    ("Timestamp", Int64),
    ("Type", Int32),
    ("TypeDescription", String),
    ("UseCostcenter", Int16),
    ("UseCostunit", Int16),
    ("VATCode", String),
];

const VAT_FIELDS: Fields = &[
    ("ID", Guid),
    ("Charged", Boolean),
    ("Code", String),
    ("Created", DateTime),
    ("Description", String),
    ("Division", Int32),
    ("IsBlocked", Boolean),
    ("Modified", DateTime),
    ("Percentage", Double),
    ("Type", String),
    ("VATTransactionType", String),
];

const PAYMENT_CONDITION_FIELDS: Fields = &[
    ("ID", Guid),
    ("Code", String),
    ("Created", DateTime),
    ("Description", String),
    ("DiscountPercentage", Double),
    ("Division", Int32),
    ("Modified", DateTime),
    ("PaymentDays", Int32),
    ("PaymentEndOfMonths", Int32),
    ("PaymentMethod", String),
];

const COST_FIELDS: Fields = &[
    ("ID", Guid),
    ("Active", Boolean),
    ("Code", String),
    ("Created", DateTime),
    ("Description", String),
    ("Division", Int32),
    ("EndDate", DateTime),
    ("Modified", DateTime),
];

const PROJECT_FIELDS: Fields = &[
    ("ID", Guid),
    ("Account", Guid),
    ("BlockEntry", Boolean),
    ("BlockPurchasing", Boolean),
    ("Code", String),
    ("Created", DateTime),
    ("Description", String),
    ("Division", Int32),
    ("EndDate", DateTime),
    ("Modified", DateTime),
    ("StartDate", DateTime),
    ("Type", Int32),
    ("TypeDescription", String),
];

const PROJECT_SYNC_FIELDS: Fields = &[
    ("ID", Guid),
    ("Account", Guid),
    ("BlockEntry", Boolean),
    ("BlockPurchasing", Boolean),
    ("Code", String),
    ("Created", DateTime),
    ("Description", String),
    ("Division", Int32),
    ("EndDate", DateTime),
    ("Modified", DateTime),
    ("StartDate", DateTime),
    ("Timestamp", Int64),
    ("Type", Int32),
    ("TypeDescription", String),
];

const JOURNAL_FIELDS: Fields = &[
    ("ID", Guid),
    ("AllowVariableCurrency", Boolean),
    ("Code", String),
    ("Created", DateTime),
    ("Currency", String),
    ("Description", String),
    ("Division", Int32),
    ("IsBlocked", Boolean),
    ("Modified", DateTime),
    ("Type", Int32),
];

const DOCUMENT_FIELDS: Fields = &[
    ("ID", Guid),
    ("Account", Guid),
    ("Body", String),
    ("Created", DateTime),
    ("Division", Int32),
    ("DocumentDate", DateTime),
    ("HasEmptyBody", Boolean),
    ("Modified", DateTime),
    ("PurchaseInvoiceNumber", Int32),
    ("Subject", String),
    ("Type", Int32),
    ("TypeDescription", String),
];

const ATTACHMENT_FIELDS: Fields = &[
    ("ID", Guid),
    ("Attachment", String),
    ("Document", Guid),
    ("FileName", String),
    ("FileSize", Double),
    ("Url", String),
];

const SUBSCRIPTION_FIELDS: Fields = &[
    ("ID", Guid),
    ("CallbackURL", String),
    ("ClientID", Guid),
    ("Created", DateTime),
    ("Creator", Guid),
    ("CreatorFullName", String),
    ("Description", String),
    ("Division", Int32),
    ("IsInstant", Boolean),
    ("Topic", String),
    ("UserID", Guid),
];

const DELETED_FIELDS: Fields = &[
    ("ID", Guid),
    ("DeletedBy", Guid),
    ("DeletedDate", DateTime),
    ("Division", Int32),
    ("EntityKey", Guid),
    ("EntityType", Int16),
    ("Timestamp", Int64),
];

macro_rules! ep {
    ($path:expr, $table:ident, $kind:ident, $key:expr, $ty:expr, $fields:expr,
     get=$g:expr, post=$p:expr, put=$u:expr, delete=$d:expr, mandatory=$m:expr) => {
        Endpoint {
            path: $path,
            table: Table::$table,
            kind: Kind::$kind,
            key: $key,
            type_name: $ty,
            fields: $fields,
            get: $g,
            post: $p,
            put: $u,
            delete: $d,
            mandatory_filter: $m,
        }
    };
}

pub static ENDPOINTS: &[Endpoint] = &[
    ep!(
        "crm/Accounts",
        Accounts,
        Standard,
        "ID",
        "Exact.Web.Api.Models.Account",
        ACCOUNT_FIELDS,
        get = true,
        post = true,
        put = true,
        delete = true,
        mandatory = true
    ),
    ep!(
        "crm/BankAccounts",
        BankAccounts,
        Standard,
        "ID",
        "Exact.Web.Api.Models.BankAccount",
        BANK_ACCOUNT_FIELDS,
        get = true,
        post = true,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "purchaseentry/PurchaseEntries",
        PurchaseEntries,
        Standard,
        "EntryID",
        "Exact.Web.Api.Models.PurchaseEntry",
        ENTRY_FIELDS,
        get = true,
        post = true,
        put = true,
        delete = true,
        mandatory = true
    ),
    ep!(
        "purchaseentry/PurchaseEntryLines",
        PurchaseEntryLines,
        Standard,
        "ID",
        "Exact.Web.Api.Models.PurchaseEntryLine",
        LINE_FIELDS,
        get = true,
        post = false,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "cashflow/Payments",
        Payments,
        Standard,
        "ID",
        "Exact.Web.Api.Models.Payment",
        PAYMENT_FIELDS,
        get = true,
        post = false,
        put = true,
        delete = false,
        mandatory = true
    ),
    ep!(
        "financial/GLAccounts",
        GlAccounts,
        Standard,
        "ID",
        "Exact.Web.Api.Models.GLAccount",
        GL_FIELDS,
        get = true,
        post = false,
        put = false,
        delete = false,
        mandatory = true
    ),
    ep!(
        "vat/VATCodes",
        VatCodes,
        Standard,
        "ID",
        "Exact.Web.Api.Models.VATCode",
        VAT_FIELDS,
        get = true,
        post = false,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "cashflow/PaymentConditions",
        PaymentConditions,
        Standard,
        "ID",
        "Exact.Web.Api.Models.PaymentCondition",
        PAYMENT_CONDITION_FIELDS,
        get = true,
        post = true,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "hrm/Costcenters",
        CostCenters,
        Standard,
        "ID",
        "Exact.Web.Api.Models.Costcenter",
        COST_FIELDS,
        get = true,
        post = false,
        put = false,
        delete = false,
        mandatory = false
    ),
    // emeq uses financial/… for the same data (spec §4, [U alias]): served from the same table.
    ep!(
        "financial/CostCenters",
        CostCenters,
        Standard,
        "ID",
        "Exact.Web.Api.Models.Costcenter",
        COST_FIELDS,
        get = true,
        post = false,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "hrm/Costunits",
        CostUnits,
        Standard,
        "ID",
        "Exact.Web.Api.Models.Costunit",
        COST_FIELDS,
        get = true,
        post = false,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "financial/CostUnits",
        CostUnits,
        Standard,
        "ID",
        "Exact.Web.Api.Models.Costunit",
        COST_FIELDS,
        get = true,
        post = false,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "project/Projects",
        Projects,
        Standard,
        "ID",
        "Exact.Web.Api.Models.Project",
        PROJECT_FIELDS,
        get = true,
        post = true,
        put = false,
        delete = false,
        mandatory = true
    ),
    ep!(
        "financial/Journals",
        Journals,
        Standard,
        "ID",
        "Exact.Web.Api.Models.Journal",
        JOURNAL_FIELDS,
        get = true,
        post = false,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "documents/Documents",
        Documents,
        Standard,
        "ID",
        "Exact.Web.Api.Models.Document",
        DOCUMENT_FIELDS,
        get = true,
        post = true,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "documents/DocumentAttachments",
        DocumentAttachments,
        Standard,
        "ID",
        "Exact.Web.Api.Models.DocumentAttachment",
        ATTACHMENT_FIELDS,
        get = true,
        post = true,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "webhooks/WebhookSubscriptions",
        WebhookSubscriptions,
        Standard,
        "ID",
        "Exact.Web.Api.Models.WebhookSubscription",
        SUBSCRIPTION_FIELDS,
        get = true,
        post = true,
        put = false,
        delete = true,
        mandatory = false
    ),
    ep!(
        "sync/CRM/Accounts",
        Accounts,
        Sync,
        "ID",
        "Exact.Web.Api.Models.Sync.CRM.Account",
        ACCOUNT_SYNC_FIELDS,
        get = true,
        post = false,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "sync/Financial/GLAccounts",
        GlAccounts,
        Sync,
        "ID",
        "Exact.Web.Api.Models.Sync.Financial.GLAccount",
        GL_SYNC_FIELDS,
        get = true,
        post = false,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "sync/Cashflow/PaymentTerms",
        Payments,
        Sync,
        "ID",
        "Exact.Web.Api.Models.Sync.Cashflow.PaymentTerm",
        PAYMENT_TERM_FIELDS,
        get = true,
        post = false,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "sync/Project/Projects",
        Projects,
        Sync,
        "ID",
        "Exact.Web.Api.Models.Sync.Project.Project",
        PROJECT_SYNC_FIELDS,
        get = true,
        post = false,
        put = false,
        delete = false,
        mandatory = false
    ),
    ep!(
        "sync/Deleted",
        Deleted,
        Sync,
        "ID",
        "Exact.Web.Api.Models.Sync.Deleted",
        DELETED_FIELDS,
        get = true,
        post = false,
        put = false,
        delete = false,
        mandatory = false
    ),
];

/// Endpoint paths match case-insensitively: Exact's URL routing does (`hrm/Costcenters` and
/// `hrm/CostCenters` both circulate in client code).
pub fn endpoint(path: &str) -> Option<&'static Endpoint> {
    ENDPOINTS.iter().find(|e| e.path.eq_ignore_ascii_case(path))
}

/// The standard endpoint whose URL a table's rows carry in `__metadata.uri` and webhooks.
pub fn home(table: Table) -> &'static Endpoint {
    ENDPOINTS
        .iter()
        .find(|e| e.table == table && e.kind == Kind::Standard)
        .expect("every table has a standard endpoint")
}

/// Every field any endpoint of the table shows: rows are stored with all of them.
pub fn all_fields(table: Table) -> Vec<(&'static str, Edm)> {
    let mut out: Vec<(&'static str, Edm)> = Vec::new();
    for e in ENDPOINTS.iter().filter(|e| e.table == table) {
        for f in e.fields {
            if !out.iter().any(|(n, _)| *n == f.0) {
                out.push(*f);
            }
        }
    }
    out
}

/// `sync/Deleted` EntityType codes named in spec §4; other tables have no known code, so their
/// deletions are not listed there.
pub fn deleted_entity_type(table: Table) -> Option<i64> {
    match table {
        Table::PurchaseEntries | Table::PurchaseEntryLines => Some(1),
        Table::Accounts => Some(2),
        Table::GlAccounts => Some(7),
        Table::Payments => Some(10),
        Table::Projects => Some(21),
        _ => None,
    }
}

/// Webhook topic for changes to a table (spec §3 "Topics"). VATCodes has no topic string in the
/// sources [U]; the simulator still offers one so reference-data flows can be exercised.
pub fn topic(table: Table) -> Option<&'static str> {
    match table {
        Table::Accounts => Some("Accounts"),
        Table::BankAccounts => Some("BankAccounts"),
        Table::PurchaseEntries | Table::PurchaseEntryLines => Some("PurchaseEntries"),
        Table::GlAccounts => Some("GLAccounts"),
        Table::Documents => Some("Documents"),
        Table::VatCodes => Some("VATCodes"),
        _ => None,
    }
}

/// Topic strings a subscription may name (spec §3).
pub const TOPICS: &[&str] = &[
    "PurchaseEntries",
    "SalesEntries",
    "BankEntries",
    "CashEntries",
    "GeneralJournalEntries",
    "PurchaseOrders",
    "SalesOrders",
    "SalesInvoices",
    "Quotations",
    "GoodsDeliveries",
    "Items",
    "Subscriptions",
    "CostTransactions",
    "TimeTransactions",
    "ProjectPlanning",
    "Accounts",
    "BankAccounts",
    "Contacts",
    "Documents",
    "GLAccounts",
    "JournalStatusList",
    "StockPositions",
    "FinancialTransactions",
    "SalesItemPrices",
    "VATCodes",
];
