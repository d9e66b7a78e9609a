//! The Connect purchase request: lenient where Connect is loose, strict where it matters.
//!
//! `parse` turns the raw body into a [`PurchaseRequest`] or a [`MalformedOrder`] that still
//! carries whatever identifying fields could be read, for the dead-letter event.

use serde::Deserialize;
use serde_json::Value;

use super::bounded::{capped, quoted};
use super::ids::{AssetId, IdError, MarketplaceId, RequestId, TierAccountId};

/// The largest body the worker reads (docs/contract.md §3).
pub const MAX_ORDER_BYTES: usize = 1024 * 1024;

/// A valid Connect request (a purchase, or a later request for the same asset: change,
/// suspend, resume, cancel), reduced to what the worker uses.
#[derive(Debug, Clone, PartialEq)]
pub struct PurchaseRequest {
    /// `type`: what the request asks for.
    pub kind: RequestKind,
    /// `id` (`PR-…`).
    pub request_id: RequestId,
    /// `asset.id` (`AS-…`).
    pub asset_id: AssetId,
    /// `asset.marketplace.id`, else the top-level `marketplace.id`.
    pub marketplace_id: MarketplaceId,
    /// `asset.tiers.customer`.
    pub customer: Customer,
    /// `asset.tiers.tier1.id`: the reseller (OPCO) that sold the order, when there is one.
    pub tier1_id: Option<TierAccountId>,
    /// `asset.tiers.tier2.id`: the tier below tier1 (often a distributor's regional entity,
    /// the OPCO, when a reseller sits below it), when there is one.
    pub tier2_id: Option<TierAccountId>,
    /// `asset.connection.type`; absent means production.
    pub connection: ConnectionType,
    /// `order_mode`; absent or empty means `new_account`.
    pub order_mode: OrderMode,
    /// Ordering parameter `aws_account_email`, as given (blank means absent).
    pub aws_account_email: Option<String>,
    /// Ordering parameter `aws_account_name`, as given (blank means absent).
    pub aws_account_name: Option<String>,
    /// Ordering parameter `iam_user_name`, as given (blank means absent).
    pub iam_user_name: Option<String>,
    /// Fulfillment parameter `aws_account_id`, as given (blank means absent): the account an
    /// existing-account purchase brings in, and the account a later request acts on. A claim:
    /// acted on only once AWS shows the account is the asset's.
    pub aws_account_id: Option<String>,
    /// The marketplace-level configuration parameters, unvalidated.
    pub configuration: ConfigurationParams,
}

/// The end customer (`asset.tiers.customer`).
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    /// `id` (`TA-…`).
    pub id: TierAccountId,
    /// `name`, empty when absent.
    pub name: String,
    /// `external_id`, when present (Connect sends it as a string or a number).
    pub external_id: Option<String>,
}

/// The kind of Connect connection an order came through (`asset.connection.type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionType {
    /// A real customer's order (also when the field is absent).
    Production,
    /// A test connection.
    Test,
    /// A vendor previewing the product.
    Preview,
    /// Any other value, kept as sent: never treated as production.
    Other(String),
}

impl ConnectionType {
    /// Reads `production`, `test` or `preview` (ignoring case and blanks); absent or blank is
    /// production.
    pub fn parse(raw: Option<&str>) -> Self {
        let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
            return Self::Production;
        };
        match raw.to_ascii_lowercase().as_str() {
            "production" => Self::Production,
            "test" => Self::Test,
            "preview" => Self::Preview,
            _ => Self::Other(raw.to_owned()),
        }
    }

    /// The type as Connect writes it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Production => "production",
            Self::Test => "test",
            Self::Preview => "preview",
            Self::Other(raw) => raw,
        }
    }
}

/// What a request asks for (its `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `purchase`: a new account, or an existing one brought in ([`OrderMode`]).
    Purchase,
    /// `change`: nothing changes in AWS; the worker confirms it.
    Change,
    /// `suspend`: the account gets the deny-all SCP.
    Suspend,
    /// `resume`: the deny-all SCP comes off.
    Resume,
    /// `cancel`: the account is closed, removed or left, per `cancel_action`.
    Cancel,
}

impl RequestKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [Self; 5] = [
        Self::Purchase,
        Self::Change,
        Self::Suspend,
        Self::Resume,
        Self::Cancel,
    ];

    /// The `type` as Connect writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::Change => "change",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
        }
    }

    /// Reads a `type`; `None` for one the worker does not handle.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }
}

/// What a purchase asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderMode {
    /// A new member account.
    NewAccount,
    /// An existing AWS account, invited into the payer's organization.
    ExistingAccount,
    /// Anything else, kept as sent.
    Other(String),
}

/// Configuration parameters from `asset.configuration.params[]`, as strings; blank means absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigurationParams {
    /// `awsAccountModel`.
    pub account_model: Option<String>,
    /// `provideRootUserForECAM`.
    pub provide_root_user_for_ecam: Option<String>,
    /// `provisionServiceControlPolicies` (ids joined by commas).
    pub service_control_policies: Option<String>,
}

/// The identifying fields of a message, as far as they could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartialIds {
    /// `id`, when it was a string.
    pub request_id: Option<String>,
    /// `asset.id`, when it was a string.
    pub asset_id: Option<String>,
    /// The marketplace id, when it was a string.
    pub marketplace_id: Option<String>,
    /// `asset.tiers.tier1.id`, when it was a string.
    pub tier1_id: Option<String>,
}

impl PartialIds {
    /// The ids of a valid order.
    pub fn of(order: &PurchaseRequest) -> Self {
        Self {
            request_id: Some(order.request_id.to_string()),
            asset_id: Some(order.asset_id.to_string()),
            marketplace_id: Some(order.marketplace_id.to_string()),
            tier1_id: order.tier1_id.as_ref().map(ToString::to_string),
        }
    }
}

/// Why a message is not a valid order. Each variant is dead-lettered at once. What a message
/// quotes of the input is cut ([`quoted`], [`capped`]): a 200 KB field makes no 200 KB message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// Over [`MAX_ORDER_BYTES`].
    #[error("the message has {0} bytes, more than the 1 MiB an order may have")]
    TooLarge(usize),
    /// Not UTF-8 JSON, or JSON that is not an object.
    #[error("the message is not a JSON object: {0}")]
    NotJson(String),
    /// `type` is none of the kinds the worker handles ([`RequestKind`]).
    #[error("the request type is {0:?}, none of purchase, change, suspend, resume or cancel")]
    UnknownType(String),
    /// A required field is absent or not a string.
    #[error("the required field `{0}` is missing")]
    MissingField(&'static str),
    /// A required id has the wrong shape.
    #[error("field `{field}`: {source}")]
    InvalidId {
        /// Where the id was read.
        field: &'static str,
        /// What is wrong with it.
        source: IdError,
    },
}

/// A message that is not a valid order, with the ids that could be read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedOrder {
    /// What is wrong.
    pub error: OrderError,
    /// What could be read anyway.
    pub ids: PartialIds,
}

/// Reads a Connect purchase request from a message body.
///
/// # Errors
/// [`MalformedOrder`] when the body is too large, not a JSON object, not a purchase, or lacks
/// a required id.
pub fn parse(body: &[u8]) -> Result<PurchaseRequest, Box<MalformedOrder>> {
    let malformed = |error, ids| Box::new(MalformedOrder { error, ids });
    if body.len() > MAX_ORDER_BYTES {
        return Err(malformed(
            OrderError::TooLarge(body.len()),
            PartialIds::default(),
        ));
    }
    // serde's messages quote the offending value whole ("invalid type: string \"…\""), so they
    // are capped.
    let not_json = |e: serde_json::Error| OrderError::NotJson(capped(&e.to_string()).into_owned());
    let value: Value =
        serde_json::from_slice(body).map_err(|e| malformed(not_json(e), PartialIds::default()))?;
    let ids = partial_ids(&value);
    let raw = RawRequest::deserialize(&value).map_err(|e| malformed(not_json(e), ids.clone()))?;
    raw.validate().map_err(|error| malformed(error, ids))
}

/// Reads the identifying fields leniently from any JSON value, each capped ([`capped`]): they
/// go into the dead-lettered event whatever their size.
fn partial_ids(value: &Value) -> PartialIds {
    let text = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(|text| capped(text).into_owned())
    };
    PartialIds {
        request_id: text("/id"),
        asset_id: text("/asset/id"),
        marketplace_id: text("/asset/marketplace/id").or_else(|| text("/marketplace/id")),
        tier1_id: text("/asset/tiers/tier1/id"),
    }
}

#[derive(Deserialize)]
struct RawRequest {
    id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    asset: Option<RawAsset>,
    marketplace: Option<RawRef>,
}

#[derive(Deserialize)]
struct RawAsset {
    id: Option<String>,
    marketplace: Option<RawRef>,
    tiers: Option<RawTiers>,
    #[serde(default, deserialize_with = "null_as_default")]
    params: Vec<RawParam>,
    configuration: Option<RawConfiguration>,
    connection: Option<RawConnection>,
}

#[derive(Deserialize)]
struct RawConnection {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct RawRef {
    id: Option<String>,
}

#[derive(Deserialize)]
struct RawTiers {
    customer: Option<RawTier>,
    tier1: Option<RawTier>,
    tier2: Option<RawTier>,
}

#[derive(Deserialize)]
struct RawTier {
    id: Option<String>,
    name: Option<String>,
    external_id: Option<Value>,
}

#[derive(Deserialize)]
struct RawConfiguration {
    #[serde(default, deserialize_with = "null_as_default")]
    params: Vec<RawParam>,
}

#[derive(Deserialize)]
struct RawParam {
    id: String,
    value: Option<Value>,
    structured_value: Option<Value>,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A parameter value as text: strings trimmed, numbers and booleans written out; blank is none.
fn value_text(value: Option<&Value>) -> Option<String> {
    let text = match value? {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// A `structured_value` as text: a scalar as [`value_text`] writes it; a list of scalars, or
/// the options of a checkbox (an object of booleans) that are checked, joined by commas.
/// Anything else (an object of other values) is not readable as one parameter value.
fn structured_text(value: Option<&Value>) -> Option<String> {
    let items: Vec<String> = match value? {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| value_text(Some(item)))
            .collect(),
        Value::Object(options) if options.values().all(Value::is_boolean) => options
            .iter()
            .filter(|(_, checked)| checked.as_bool() == Some(true))
            .map(|(option, _)| option.trim().to_owned())
            .filter(|option| !option.is_empty())
            .collect(),
        Value::Object(_) => return None,
        scalar => return value_text(Some(scalar)),
    };
    (!items.is_empty()).then(|| items.join(","))
}

/// The parameter `id`: its `value`, or where that is empty, its `structured_value`.
fn param(params: &[RawParam], id: &str) -> Option<String> {
    let found = params.iter().find(|p| p.id == id)?;
    value_text(found.value.as_ref()).or_else(|| structured_text(found.structured_value.as_ref()))
}

/// An optional tier's id: a tier without one (Connect sends `{}` for absent tiers) is none.
fn tier_id(
    tier: Option<RawTier>,
    field: &'static str,
) -> Result<Option<TierAccountId>, OrderError> {
    match tier.and_then(|t| t.id).filter(|id| !id.is_empty()) {
        Some(raw) => TierAccountId::parse(&raw)
            .map(Some)
            .map_err(|source| invalid_id(field, source)),
        None => Ok(None),
    }
}

fn required<'a>(value: Option<&'a str>, field: &'static str) -> Result<&'a str, OrderError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or(OrderError::MissingField(field))
}

fn id<T>(
    value: Option<&str>,
    field: &'static str,
    parse: fn(&str) -> Result<T, IdError>,
) -> Result<T, OrderError> {
    parse(required(value, field)?).map_err(|source| invalid_id(field, source))
}

/// An [`OrderError::InvalidId`] quoting at most [`quoted`]'s share of the value.
fn invalid_id(field: &'static str, source: IdError) -> OrderError {
    let value = quoted(&source.value).into_owned();
    OrderError::InvalidId {
        field,
        source: IdError { value, ..source },
    }
}

impl RawRequest {
    fn validate(self) -> Result<PurchaseRequest, OrderError> {
        let raw_kind = required(self.kind.as_deref(), "type")?;
        let kind = RequestKind::parse(raw_kind)
            .ok_or_else(|| OrderError::UnknownType(quoted(raw_kind).into_owned()))?;
        let request_id = id(self.id.as_deref(), "id", RequestId::parse)?;
        let asset = self.asset.ok_or(OrderError::MissingField("asset"))?;
        let asset_id = id(asset.id.as_deref(), "asset.id", AssetId::parse)?;
        let marketplace = asset
            .marketplace
            .and_then(|m| m.id)
            .or_else(|| self.marketplace.and_then(|m| m.id));
        let marketplace_id = id(
            marketplace.as_deref(),
            "asset.marketplace.id",
            MarketplaceId::parse,
        )?;
        let tiers = asset
            .tiers
            .ok_or(OrderError::MissingField("asset.tiers.customer"))?;
        let raw_customer = tiers
            .customer
            .ok_or(OrderError::MissingField("asset.tiers.customer"))?;
        let customer = Customer {
            id: id(
                raw_customer.id.as_deref(),
                "asset.tiers.customer.id",
                TierAccountId::parse,
            )?,
            name: raw_customer.name.unwrap_or_default(),
            external_id: value_text(raw_customer.external_id.as_ref()),
        };
        let tier1_id = tier_id(tiers.tier1, "asset.tiers.tier1.id")?;
        let tier2_id = tier_id(tiers.tier2, "asset.tiers.tier2.id")?;
        let connection = ConnectionType::parse(asset.connection.and_then(|c| c.kind).as_deref());
        let params = &asset.params;
        let order_mode = match param(params, "order_mode") {
            None => OrderMode::NewAccount,
            Some(mode) if mode == "new_account" => OrderMode::NewAccount,
            Some(mode) if mode == "existing_account" => OrderMode::ExistingAccount,
            Some(other) => OrderMode::Other(other),
        };
        let config = asset.configuration.map(|c| c.params).unwrap_or_default();
        Ok(PurchaseRequest {
            kind,
            request_id,
            asset_id,
            marketplace_id,
            customer,
            tier1_id,
            tier2_id,
            connection,
            order_mode,
            aws_account_email: param(params, "aws_account_email"),
            aws_account_name: param(params, "aws_account_name"),
            iam_user_name: param(params, "iam_user_name"),
            aws_account_id: param(params, "aws_account_id"),
            configuration: ConfigurationParams {
                account_model: param(&config, "awsAccountModel"),
                provide_root_user_for_ecam: param(&config, "provideRootUserForECAM"),
                service_control_policies: param(&config, "provisionServiceControlPolicies"),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    impl OrderError {
        /// The failure-reason code a dead-lettered message gets for this error.
        fn reason(&self) -> String {
            crate::retry::Reason::from(self).as_str().to_owned()
        }
    }

    fn base() -> Value {
        json!({
            "id": "PR-5852-1608-1567-000",
            "type": "purchase",
            "status": "pending",
            "asset": {
                "id": "AS-8790-0160-2196",
                "marketplace": {"id": "MP-91673"},
                "tiers": {
                    "customer": {"id": "TA-0-7304-8514-7852", "name": "Hospitaller", "external_id": 7},
                    "tier1": {"id": "TA-0-9046-4815-5226", "name": "Reseller"},
                    "tier2": {}
                },
                "params": [
                    {"id": "aws_account_email", "value": "  Jane@Example.com "},
                    {"id": "iam_user_name", "value": ""}
                ],
                "configuration": {"params": [
                    {"id": "awsAccountModel", "value": "ECAM"},
                    {"id": "provideRootUserForECAM", "value": "No"}
                ]}
            },
            "assignee": "",
            "unknown_field": {"anything": [1, 2]}
        })
    }

    fn parse_value(value: &Value) -> Result<PurchaseRequest, Box<MalformedOrder>> {
        parse(value.to_string().as_bytes())
    }

    #[test]
    fn reads_a_full_request() {
        let order = parse_value(&base()).expect("valid order");
        assert_eq!(order.request_id.as_str(), "PR-5852-1608-1567-000");
        assert_eq!(order.asset_id.as_str(), "AS-8790-0160-2196");
        assert_eq!(order.marketplace_id.as_str(), "MP-91673");
        assert_eq!(order.customer.name, "Hospitaller");
        assert_eq!(order.customer.external_id.as_deref(), Some("7"));
        assert_eq!(
            order.tier1_id.as_ref().map(|t| t.as_str()),
            Some("TA-0-9046-4815-5226")
        );
        assert_eq!(order.order_mode, OrderMode::NewAccount);
        assert_eq!(order.aws_account_email.as_deref(), Some("Jane@Example.com"));
        assert_eq!(
            order.iam_user_name, None,
            "blank parameter counts as absent"
        );
        assert_eq!(order.configuration.account_model.as_deref(), Some("ECAM"));
        assert_eq!(order.configuration.service_control_policies, None);
    }

    #[test]
    fn accepts_connect_loose_shapes() {
        let mut value = base();
        value["assignee"] = json!({"id": "UR-1", "name": "Someone"});
        value["asset"]["tiers"]["tier1"] = json!({});
        value["asset"]["tiers"]
            .as_object_mut()
            .expect("object")
            .remove("tier2");
        value["asset"]["marketplace"] = json!(null);
        value["marketplace"] = json!({"id": "MP-12345"});
        value["asset"]["configuration"]["params"][1]["value"] = json!("False");
        value["asset"]["params"] = json!(null);
        let order = parse_value(&value).expect("loose but valid");
        assert_eq!(order.tier1_id, None);
        assert_eq!(order.marketplace_id.as_str(), "MP-12345");
        assert_eq!(
            order.configuration.provide_root_user_for_ecam.as_deref(),
            Some("False")
        );
        assert_eq!(order.aws_account_email, None);
    }

    #[test]
    fn every_request_kind_parses_with_the_account_it_names() {
        for kind in RequestKind::ALL {
            let mut value = base();
            value["type"] = json!(kind.as_str());
            value["asset"]["params"] = json!([{"id": "aws_account_id", "value": "111122223333"}]);
            let request = parse_value(&value).expect("a valid request");
            assert_eq!(request.kind, kind);
            assert_eq!(request.aws_account_id.as_deref(), Some("111122223333"));
        }
        let mut value = base();
        value["type"] = json!("Suspend");
        assert!(matches!(
            parse_value(&value).expect_err("case matters").error,
            OrderError::UnknownType(_)
        ));
    }

    #[test]
    fn order_mode_is_strict() {
        let cases = [
            (json!("new_account"), OrderMode::NewAccount),
            (json!(""), OrderMode::NewAccount),
            (json!("existing_account"), OrderMode::ExistingAccount),
            (json!("New_Account"), OrderMode::Other("New_Account".into())),
        ];
        for (mode, expected) in cases {
            let mut value = base();
            value["asset"]["params"] = json!([{"id": "order_mode", "value": mode}]);
            assert_eq!(
                parse_value(&value).expect("valid").order_mode,
                expected,
                "{mode}"
            );
        }
    }

    #[test]
    fn malformed_messages_say_why_and_keep_readable_ids() {
        let not_purchase = {
            let mut v = base();
            v["type"] = json!("adjustment");
            v
        };
        let bad_id = {
            let mut v = base();
            v["asset"]["id"] = json!("XX-1");
            v
        };
        let no_customer = {
            let mut v = base();
            v["asset"]["tiers"] = json!({"tier2": {}});
            v
        };
        let no_marketplace = {
            let mut v = base();
            v["asset"]
                .as_object_mut()
                .expect("object")
                .remove("marketplace");
            v
        };
        let cases = [
            (not_purchase, "UNKNOWN_REQUEST_TYPE"),
            (bad_id, "INVALID_ID"),
            (no_customer, "MISSING_FIELD"),
            (no_marketplace, "MISSING_FIELD"),
            (json!([1, 2]), "NOT_JSON"),
            (json!({"id": 5, "type": "purchase"}), "NOT_JSON"),
        ];
        for (value, code) in cases {
            let err = parse_value(&value).expect_err("malformed");
            assert_eq!(err.error.reason(), code, "{value}");
        }
        let err = parse_value(&not_purchase_ids()).expect_err("not a purchase");
        assert_eq!(err.ids.request_id.as_deref(), Some("PR-5852-1608-1567-000"));
        assert_eq!(err.ids.asset_id.as_deref(), Some("AS-8790-0160-2196"));
        assert_eq!(err.ids.marketplace_id.as_deref(), Some("MP-91673"));
    }

    #[test]
    fn reads_tier2_and_the_connection_type() {
        let mut value = base();
        value["asset"]["tiers"]["tier2"] =
            json!({"id": "TA-0-1111-2222-3333", "name": "Distributor"});
        value["asset"]["connection"] = json!({"id": "CT-0000-0000-0000", "type": "test"});
        let order = parse_value(&value).expect("valid");
        assert_eq!(
            order.tier2_id.as_ref().map(|t| t.as_str()),
            Some("TA-0-1111-2222-3333")
        );
        assert_eq!(order.connection, ConnectionType::Test);
        assert_eq!(
            parse_value(&base()).expect("valid").connection,
            ConnectionType::Production,
            "absent is production"
        );
        for (raw, expected) in [
            (json!("production"), ConnectionType::Production),
            (json!("Preview"), ConnectionType::Preview),
            (json!(""), ConnectionType::Production),
            (json!(null), ConnectionType::Production),
            (json!("staging"), ConnectionType::Other("staging".into())),
        ] {
            let mut value = base();
            value["asset"]["connection"] = json!({"type": raw});
            assert_eq!(
                parse_value(&value).expect("valid").connection,
                expected,
                "{raw}"
            );
        }
        let mut bad_tier2 = base();
        bad_tier2["asset"]["tiers"]["tier2"] = json!({"id": "XX-1"});
        assert_eq!(
            parse_value(&bad_tier2).expect_err("bad id").error.reason(),
            "INVALID_ID"
        );
    }

    #[test]
    fn structured_values_are_read_where_the_value_is_empty() {
        let mut value = base();
        value["asset"]["params"] = json!([
            {"id": "aws_account_email", "value": "", "structured_value": "jane@customer.org"},
            {"id": "iam_user_name", "structured_value": "jane.admin"},
            {"id": "aws_account_name", "value": "Given", "structured_value": "ignored"}
        ]);
        value["asset"]["configuration"]["params"] = json!([
            {"id": "awsAccountModel", "value": null, "structured_value": "ECAM"},
            {"id": "provideRootUserForECAM", "value": "", "structured_value": true},
            {"id": "provisionServiceControlPolicies", "value": "",
             "structured_value": {"p-abcd1234": true, "p-unticked1": false, "p-efgh5678": true}}
        ]);
        let order = parse_value(&value).expect("valid");
        assert_eq!(
            order.aws_account_email.as_deref(),
            Some("jane@customer.org")
        );
        assert_eq!(order.iam_user_name.as_deref(), Some("jane.admin"));
        assert_eq!(
            order.aws_account_name.as_deref(),
            Some("Given"),
            "value wins"
        );
        let config = &order.configuration;
        assert_eq!(config.account_model.as_deref(), Some("ECAM"));
        assert_eq!(config.provide_root_user_for_ecam.as_deref(), Some("true"));
        assert_eq!(
            config.service_control_policies.as_deref(),
            Some("p-abcd1234,p-efgh5678"),
            "a checkbox's ticked options"
        );
        // A list, an object that is not a checkbox, and nothing ticked.
        let cases = [
            (
                json!(["p-abcd1234", "p-efgh5678"]),
                Some("p-abcd1234,p-efgh5678"),
            ),
            (json!({"nested": {"a": 1}}), None),
            (json!({"p-abcd1234": false}), None),
            (json!([]), None),
        ];
        for (structured, expected) in cases {
            let mut value = base();
            value["asset"]["configuration"]["params"] = json!([
                {"id": "provisionServiceControlPolicies", "value": "", "structured_value": structured}
            ]);
            let order = parse_value(&value).expect("valid");
            assert_eq!(
                order.configuration.service_control_policies.as_deref(),
                expected,
                "{structured}"
            );
        }
    }

    #[test]
    fn a_huge_field_makes_no_huge_message_nor_id() {
        let huge = "9".repeat(200 * 1024);
        let with = |pointer: &str, value: Value| {
            let mut v = base();
            *v.pointer_mut(pointer).expect("field") = value;
            v
        };
        #[rustfmt::skip]
        let cases = [
            ("id", with("/id", json!(format!("PR-{huge}"))), "INVALID_ID"),
            ("asset id", with("/asset/id", json!(huge.clone())), "INVALID_ID"),
            ("type", with("/type", json!(huge.clone())), "UNKNOWN_REQUEST_TYPE"),
            // serde quotes the string it did not expect.
            ("a string for an object", with("/asset/tiers", json!(huge.clone())), "NOT_JSON"),
        ];
        for (name, value, code) in cases {
            let err = parse_value(&value).expect_err("malformed");
            assert_eq!(err.error.reason(), code, "{name}");
            let message = err.error.to_string();
            // At most a capped value and a few words about it.
            assert!(message.len() < 1024 + 64, "{name}: {} bytes", message.len());
            let ids = [
                &err.ids.request_id,
                &err.ids.asset_id,
                &err.ids.marketplace_id,
            ];
            for id in ids.into_iter().flatten() {
                assert!(
                    id.len() <= crate::domain::bounded::MAX_INPUT_TEXT_BYTES,
                    "{name}"
                );
            }
        }
    }

    fn not_purchase_ids() -> Value {
        let mut v = base();
        v["type"] = json!("adjustment");
        v
    }

    #[test]
    fn bodies_that_are_not_json_or_too_large_are_refused() {
        assert_eq!(
            parse(b"not json").expect_err("text").error.reason(),
            "NOT_JSON"
        );
        assert_eq!(
            parse(&[0xff, 0xfe]).expect_err("binary").error.reason(),
            "NOT_JSON"
        );
        let big = vec![b' '; MAX_ORDER_BYTES + 1];
        assert_eq!(
            parse(&big).expect_err("big").error,
            OrderError::TooLarge(MAX_ORDER_BYTES + 1)
        );
    }
}
