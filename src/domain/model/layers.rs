//! The layers of business-model settings and the one rule of which apply, most specific first
//! (docs/contract.md §4): the OPCO override only where the marketplace is `multi_payer` (the
//! entry of the order's tier1 account, else its tier2's), then the marketplace section, then
//! `[business_model]`. The request's own parameter, where a setting has one, sits between the
//! OPCO and the marketplace ([`Applicable::pick_with_request`]).
//!
//! [`LayerTree::applicable`] serves resolution; [`LayerTree::every`] serves start-up
//! validation and `check`, which walk every configured layer with the layers that apply there.

use std::collections::BTreeMap;
use std::fmt;

use super::settings::{MarketplaceSettings, ModelSettings};

/// Which tier account an OPCO override was found under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// `asset.tiers.tier1.id`.
    Tier1,
    /// `asset.tiers.tier2.id`.
    Tier2,
}

/// Where a resolved setting came from: one of the layers of docs/contract.md §4, or the order itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The OPCO override of a `multi_payer` marketplace, found under this tier's account.
    Opco {
        /// tier1 or tier2.
        tier: Tier,
        /// The tier account id (`TA-…`) the override is keyed by.
        id: String,
    },
    /// The request's own parameter, by its Connect id.
    Request(&'static str),
    /// The `[marketplaces."MP-…"]` section.
    Marketplace(String),
    /// The global `[business_model]` defaults.
    Global,
    /// Nothing configured: the worker's fallback (no OU, no template id, no SCPs, no root user).
    Fallback,
    /// Derived from the order's ids and customer (a name).
    Derived,
    /// A field of the order itself.
    Order,
    /// `[connections]`: the payer named for the order's connection type.
    Connection(&'static str),
    /// A rule of the business model (SPAM always gives an IAM user).
    Rule(&'static str),
    /// Configured for the layers' payer, not applied: a test or preview order goes to the
    /// payer `[connections]` names, whose organization has other OUs and SCPs.
    NotForConnection {
        /// The payer the layers chose.
        layers_payer: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Opco { tier, id } => {
                let tier = match tier {
                    Tier::Tier1 => "tier1",
                    Tier::Tier2 => "tier2",
                };
                write!(f, "OPCO {tier} {id}")
            }
            Self::Request(param) => write!(f, "request parameter {param}"),
            Self::Marketplace(id) => write!(f, "marketplace {id}"),
            Self::Global => f.write_str("global default"),
            Self::Fallback => f.write_str("not configured"),
            Self::Derived => f.write_str("derived from the order"),
            Self::Order => f.write_str("order"),
            Self::Connection(kind) => write!(f, "connections.{kind}"),
            Self::Rule(rule) => write!(f, "rule: {rule}"),
            Self::NotForConnection { layers_payer } => write!(
                f,
                "not applied: configured for payer {layers_payer}, the connection's payer is another organization"
            ),
        }
    }
}

/// Where a configured layer sits in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place<'a> {
    /// `[business_model]`.
    Global,
    /// `[marketplaces."MP-…"]`.
    Marketplace(&'a str),
    /// `[marketplaces."MP-…".opcos."TA-…"]`, matched by this tier of the order.
    Opco {
        /// The marketplace section it is in.
        marketplace: &'a str,
        /// The tier it was matched by (for a configured layer walked without an order: tier1).
        tier: Tier,
        /// The tier account id it is keyed by.
        account: &'a str,
    },
}

impl Place<'_> {
    /// The dotted key of the layer: `business_model`, `marketplaces."MP-…"` or
    /// `marketplaces."MP-…".opcos."TA-…"`.
    pub fn key(&self) -> String {
        match self {
            Self::Global => "business_model".to_owned(),
            Self::Marketplace(id) => format!("marketplaces.\"{id}\""),
            Self::Opco {
                marketplace,
                account,
                ..
            } => format!("marketplaces.\"{marketplace}\".opcos.\"{account}\""),
        }
    }

    /// The origin a value of this layer gets in a plan.
    pub fn origin(&self) -> Origin {
        match self {
            Self::Global => Origin::Global,
            Self::Marketplace(id) => Origin::Marketplace((*id).to_owned()),
            Self::Opco { tier, account, .. } => Origin::Opco {
                tier: *tier,
                id: (*account).to_owned(),
            },
        }
    }
}

/// One configured layer and where it sits.
#[derive(Debug, Clone, Copy)]
pub struct Layer<'a> {
    /// Its settings.
    pub settings: &'a ModelSettings,
    /// Where it is.
    pub place: Place<'a>,
}

/// The configured layers: `[business_model]` and the `[marketplaces."MP-…"]` sections with
/// their OPCO overrides.
#[derive(Debug, Clone, Copy)]
pub struct LayerTree<'a> {
    /// `[business_model]`.
    pub global: &'a ModelSettings,
    /// `[marketplaces."MP-…"]` by marketplace id.
    pub marketplaces: &'a BTreeMap<String, MarketplaceSettings>,
}

impl<'a> LayerTree<'a> {
    /// The layers that apply to an order from `marketplace` with these tier accounts, most
    /// specific first: the OPCO override where the marketplace is `multi_payer` (the first tier
    /// with an entry), the marketplace section, `[business_model]`.
    pub fn applicable(
        &self,
        marketplace: &str,
        tiers: [(Tier, Option<&str>); 2],
    ) -> Applicable<'a> {
        let section = self.marketplaces.get_key_value(marketplace);
        let opco = section
            .filter(|(_, section)| section.multi_payer)
            .and_then(|(id, section)| {
                tiers.into_iter().find_map(|(tier, account)| {
                    let (account, settings) = section.opcos.get_key_value(account?)?;
                    Some(Layer {
                        settings,
                        place: Place::Opco {
                            marketplace: id,
                            tier,
                            account,
                        },
                    })
                })
            });
        let marketplace = section.map(|(id, section)| Layer {
            settings: &section.settings,
            place: Place::Marketplace(id),
        });
        let global = Layer {
            settings: self.global,
            place: Place::Global,
        };
        Applicable {
            layers: [opco, marketplace, Some(global)],
        }
    }

    /// Every configured layer (`[business_model]`, each marketplace, each OPCO override), each
    /// with the layers that apply to an order resolved there: for an OPCO override, an order
    /// whose tier1 account it is keyed by. The override itself is among them only where its
    /// marketplace is `multi_payer`.
    pub fn every(&self) -> impl Iterator<Item = (Layer<'a>, Applicable<'a>)> + '_ {
        let global = Layer {
            settings: self.global,
            place: Place::Global,
        };
        let global = std::iter::once((global, self.applicable("", [(Tier::Tier1, None); 2])));
        let sections = self.marketplaces.iter().flat_map(move |(id, section)| {
            let own = Layer {
                settings: &section.settings,
                place: Place::Marketplace(id),
            };
            let own = std::iter::once((own, self.applicable(id, [(Tier::Tier1, None); 2])));
            let opcos = section.opcos.iter().map(move |(account, settings)| {
                let layer = Layer {
                    settings,
                    place: Place::Opco {
                        marketplace: id,
                        tier: Tier::Tier1,
                        account,
                    },
                };
                let tiers = [(Tier::Tier1, Some(account.as_str())), (Tier::Tier2, None)];
                (layer, self.applicable(id, tiers))
            });
            own.chain(opcos)
        });
        global.chain(sections)
    }
}

/// The layers that apply in one place, most specific first.
#[derive(Debug, Clone)]
pub struct Applicable<'a> {
    layers: [Option<Layer<'a>>; 3],
}

impl<'a> Applicable<'a> {
    /// The layers, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = Layer<'a>> + '_ {
        self.layers.iter().flatten().copied()
    }

    /// Whether the layer at `place` is among them.
    pub fn includes(&self, place: &Place<'_>) -> bool {
        self.iter().any(|layer| layer.place == *place)
    }

    /// The first value `field` finds, most specific layer first, with the layer it is in.
    pub fn find<T>(
        &self,
        field: impl Fn(&'a ModelSettings) -> Option<T>,
    ) -> Option<(T, Layer<'a>)> {
        self.iter()
            .find_map(|layer| field(layer.settings).map(|value| (value, layer)))
    }

    /// The first configured value, most specific layer first, with its origin.
    pub fn pick<T>(&self, field: impl Fn(&'a ModelSettings) -> Option<T>) -> Option<(T, Origin)> {
        self.pick_with_request(None, field)
    }

    /// Like [`Applicable::pick`], with the request's own value (and its parameter id) between
    /// the OPCO and the marketplace layers.
    pub fn pick_with_request<T>(
        &self,
        request: Option<(T, &'static str)>,
        field: impl Fn(&'a ModelSettings) -> Option<T>,
    ) -> Option<(T, Origin)> {
        let mut request = request;
        for layer in self.iter() {
            if !matches!(layer.place, Place::Opco { .. })
                && let Some((value, param)) = request.take()
            {
                return Some((value, Origin::Request(param)));
            }
            if let Some(value) = field(layer.settings) {
                return Some((value, layer.place.origin()));
            }
        }
        request.map(|(value, param)| (value, Origin::Request(param)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MP: &str = "MP-1";
    const T1: &str = "TA-1";
    const T2: &str = "TA-2";

    fn layer(payer: &str) -> ModelSettings {
        ModelSettings {
            payer: Some(payer.to_owned()),
            ..ModelSettings::default()
        }
    }

    /// `[business_model]` plus MP-1 (with `multi_payer` as given, its own layer if
    /// `marketplace`) and OPCO entries for TA-1 and TA-2.
    fn tree(
        multi_payer: bool,
        marketplace: bool,
        opcos: &[&str],
    ) -> (ModelSettings, BTreeMap<String, MarketplaceSettings>) {
        let section = MarketplaceSettings {
            multi_payer,
            opcos: opcos
                .iter()
                .map(|id| ((*id).to_owned(), layer(&format!("opco {id}"))))
                .collect(),
            settings: if marketplace {
                layer("marketplace")
            } else {
                ModelSettings::default()
            },
        };
        (layer("global"), BTreeMap::from([(MP.to_owned(), section)]))
    }

    #[test]
    fn the_applicable_layers_and_their_origins() {
        let opco = |tier, id: &str| Origin::Opco {
            tier,
            id: id.to_owned(),
        };
        let market = Origin::Marketplace(MP.to_owned());
        // (multi_payer, marketplace layer, OPCO entries, order's marketplace, tier1, tier2,
        //  request parameter, expected payer, expected origin)
        #[rustfmt::skip]
        let cases = [
            // global only: another marketplace, or none of MP-1's layers set it
            (false, false, &[][..], "MP-9", Some(T1), None, None, "global", Origin::Global),
            (false, false, &[][..], MP, Some(T1), None, None, "global", Origin::Global),
            // the marketplace
            (false, true, &[][..], MP, Some(T1), None, None, "marketplace", market.clone()),
            // the request's parameter beats the marketplace and the global layer
            (false, true, &[][..], MP, None, None, Some("request"), "request", Origin::Request("param")),
            (false, false, &[][..], MP, None, None, Some("request"), "request", Origin::Request("param")),
            // an OPCO entry without multi_payer: ignored
            (false, true, &[T1][..], MP, Some(T1), None, None, "marketplace", market.clone()),
            (false, false, &[T1][..], MP, Some(T1), None, Some("request"), "request", Origin::Request("param")),
            // with multi_payer: it beats the request, the marketplace and the global layer
            (true, true, &[T1][..], MP, Some(T1), None, Some("request"), "opco TA-1", opco(Tier::Tier1, T1)),
            (true, false, &[T1][..], MP, Some(T1), None, None, "opco TA-1", opco(Tier::Tier1, T1)),
            // tier1's entry before tier2's; tier2's when tier1 has none
            (true, true, &[T1, T2][..], MP, Some(T1), Some(T2), None, "opco TA-1", opco(Tier::Tier1, T1)),
            (true, true, &[T2][..], MP, Some(T1), Some(T2), None, "opco TA-2", opco(Tier::Tier2, T2)),
            (true, true, &[T1][..], MP, Some("TA-9"), Some(T1), None, "opco TA-1", opco(Tier::Tier2, T1)),
            (true, true, &[T1][..], MP, None, Some(T1), None, "opco TA-1", opco(Tier::Tier2, T1)),
            // multi_payer, but no entry for the order's tiers
            (true, true, &[T2][..], MP, Some(T1), None, None, "marketplace", market.clone()),
            (true, false, &[T2][..], MP, Some(T1), None, None, "global", Origin::Global),
        ];
        for (
            i,
            (multi_payer, marketplace, opcos, order_mp, tier1, tier2, request, payer, origin),
        ) in cases.into_iter().enumerate()
        {
            let (global, marketplaces) = tree(multi_payer, marketplace, opcos);
            let tree = LayerTree {
                global: &global,
                marketplaces: &marketplaces,
            };
            let applicable =
                tree.applicable(order_mp, [(Tier::Tier1, tier1), (Tier::Tier2, tier2)]);
            let picked = applicable
                .pick_with_request(request.map(|r| (r.to_owned(), "param")), |s| {
                    s.payer.clone()
                })
                .expect("the global layer sets a payer");
            assert_eq!(picked, (payer.to_owned(), origin), "case {i}");
        }
    }

    #[test]
    fn a_request_value_applies_below_an_opco_that_sets_nothing() {
        let (global, marketplaces) = tree(true, true, &[T1]);
        let tree = LayerTree {
            global: &global,
            marketplaces: &marketplaces,
        };
        let applicable = tree.applicable(MP, [(Tier::Tier1, Some(T1)), (Tier::Tier2, None)]);
        let picked = applicable.pick_with_request(Some((true, "provideRootUserForECAM")), |s| {
            s.provide_root_user_for_ecam
        });
        assert_eq!(
            picked,
            Some((true, Origin::Request("provideRootUserForECAM")))
        );
        assert_eq!(applicable.pick(|s| s.provide_root_user_for_ecam), None);
    }

    #[test]
    fn every_layer_is_walked_with_what_applies_there() {
        for multi_payer in [false, true] {
            let (global, marketplaces) = tree(multi_payer, true, &[T1]);
            let tree = LayerTree {
                global: &global,
                marketplaces: &marketplaces,
            };
            let walked: Vec<(String, Vec<String>)> = tree
                .every()
                .map(|(layer, applicable)| {
                    let keys = applicable.iter().map(|l| l.place.key()).collect();
                    (layer.place.key(), keys)
                })
                .collect();
            let global = "business_model".to_owned();
            let market = "marketplaces.\"MP-1\"".to_owned();
            let opco = "marketplaces.\"MP-1\".opcos.\"TA-1\"".to_owned();
            let opco_applies = if multi_payer {
                vec![opco.clone(), market.clone(), global.clone()]
            } else {
                vec![market.clone(), global.clone()]
            };
            assert_eq!(
                walked,
                [
                    (global.clone(), vec![global.clone()]),
                    (market.clone(), vec![market.clone(), global.clone()]),
                    (opco, opco_applies),
                ],
                "multi_payer {multi_payer}"
            );
        }
    }
}
