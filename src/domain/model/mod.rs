//! The business model (docs/contract.md §4): what a layer configures ([`settings`]), which
//! layers apply to an order ([`layers`]), the email rules ([`email_rules`]), and resolution of
//! an order to a [`Plan`] ([`resolve`]).

pub mod email_rules;
pub mod later;
pub mod layers;
pub mod resolve;
pub mod settings;

pub use super::account_model::AccountModel;
pub use email_rules::{TEMPLATE_PLACEHOLDERS, render_template};
pub use later::{LaterKind, LaterPlan, is_later, no_account_id};
pub use layers::{Applicable, Layer, LayerTree, Origin, Place, Tier};
pub use resolve::{Access, Connections, Plan, Routing, Rules, SETTINGS};
pub use settings::{CancelAction, MarketplaceSettings, ModelSettings, SettingsIssue};
