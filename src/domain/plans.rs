//! Tiers and the one table of plan limits and prices.

use std::{fmt, str::FromStr};

/// A subscription plan level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Free,
    Pro,
    Premium,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Free, Tier::Pro, Tier::Premium];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Premium => "premium",
        }
    }

    pub fn plan(self) -> &'static Plan {
        match self {
            Tier::Free => &PLANS[0],
            Tier::Pro => &PLANS[1],
            Tier::Premium => &PLANS[2],
        }
    }

    pub fn is_paid(self) -> bool {
        self != Tier::Free
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.plan().name)
    }
}

/// A stored tier name that this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown tier {0:?}")]
pub struct UnknownTier(pub String);

impl FromStr for Tier {
    type Err = UnknownTier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTier(s.to_string()))
    }
}

/// A quota: a number, or no limit at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Max(u64),
    Unlimited,
}

impl Limit {
    /// The wire form: the number, or -1 for unlimited.
    pub fn as_wire(self) -> i64 {
        match self {
            Limit::Max(n) => i64::try_from(n).unwrap_or(i64::MAX),
            Limit::Unlimited => -1,
        }
    }
}

/// What a plan allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    pub cards: Limit,
    pub contacts: Limit,
    pub analytics_retention_days: Limit,
}

/// One tier's offer. Money is integer minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub tier: Tier,
    pub name: &'static str,
    pub price_minor: i64,
    pub currency: &'static str,
    pub interval: &'static str,
    pub limits: PlanLimits,
}

/// The plans, cheapest first. This table is the only place limits and prices are written down.
pub const PLANS: [Plan; 3] = [
    Plan {
        tier: Tier::Free,
        name: "Free",
        price_minor: 0,
        currency: "usd",
        interval: "month",
        limits: PlanLimits {
            cards: Limit::Max(1),
            contacts: Limit::Max(50),
            analytics_retention_days: Limit::Max(7),
        },
    },
    Plan {
        tier: Tier::Pro,
        name: "Pro",
        price_minor: 900,
        currency: "usd",
        interval: "month",
        limits: PlanLimits {
            cards: Limit::Max(5),
            contacts: Limit::Unlimited,
            analytics_retention_days: Limit::Max(90),
        },
    },
    Plan {
        tier: Tier::Premium,
        name: "Premium",
        price_minor: 2900,
        currency: "usd",
        interval: "month",
        limits: PlanLimits {
            cards: Limit::Unlimited,
            contacts: Limit::Unlimited,
            analytics_retention_days: Limit::Unlimited,
        },
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tier_finds_its_own_plan() {
        for tier in Tier::ALL {
            assert_eq!(tier.plan().tier, tier);
            assert_eq!(tier.as_str().parse::<Tier>().ok(), Some(tier));
        }
        assert!("gold".parse::<Tier>().is_err());
    }
}
