//! Usage against plan limits, and the limit check other services call before creating things.

use super::{Limit, Tier};

/// Something a plan limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Cards,
    Contacts,
}

impl Resource {
    fn noun(self) -> &'static str {
        match self {
            Resource::Cards => "cards",
            Resource::Contacts => "contacts",
        }
    }
}

/// What a user has, counted from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub cards: u64,
    pub contacts: u64,
}

impl Usage {
    pub fn of(&self, resource: Resource) -> u64 {
        match resource {
            Resource::Cards => self.cards,
            Resource::Contacts => self.contacts,
        }
    }
}

/// The answer to "may this user create `quantity` more of `resource`?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCheck {
    pub allowed: bool,
    pub tier: Tier,
    pub used: u64,
    pub limit: Limit,
    /// How many more fit; `None` when unlimited.
    pub remaining: Option<u64>,
    /// How far the user already is above the limit (after a downgrade).
    pub over_limit_by: u64,
    /// A sentence for the user when not allowed; empty when allowed.
    pub reason: String,
    /// How many of the asked items are beyond the limit and billed as extras (overage).
    pub extra: u64,
}

/// Which tier may buy cards beyond its limit, one card-month at a time (overage).
pub const OVERAGE_TIER: Tier = Tier::Pro;

/// [`check_limit`] for a user who opted in to extra cards: on the overage tier, cards beyond
/// the limit are allowed and counted as extras.
pub fn check_limit_with_extras(
    tier: Tier,
    usage: &Usage,
    resource: Resource,
    quantity: u64,
    extras: bool,
) -> LimitCheck {
    let mut check = check_limit(tier, usage, resource, quantity);
    if !(extras && tier == OVERAGE_TIER && resource == Resource::Cards) {
        return check;
    }
    let Limit::Max(max) = check.limit else {
        return check;
    };
    let after = check.used.saturating_add(quantity);
    check.extra = after.saturating_sub(max) - check.used.saturating_sub(max);
    if !check.allowed {
        check.allowed = true;
        check.reason = String::new();
    }
    check
}

/// Cards beyond the overage tier's limit (billed as extras when the user opted in).
pub fn extra_cards(tier: Tier, cards: u64) -> u64 {
    match (tier == OVERAGE_TIER, tier.plan().limits.cards) {
        (true, Limit::Max(max)) => cards.saturating_sub(max),
        _ => 0,
    }
}

/// Decides whether `quantity` more items fit the effective tier's limit.
pub fn check_limit(tier: Tier, usage: &Usage, resource: Resource, quantity: u64) -> LimitCheck {
    let used = usage.of(resource);
    let limits = tier.plan().limits;
    let limit = match resource {
        Resource::Cards => limits.cards,
        Resource::Contacts => limits.contacts,
    };
    let Limit::Max(max) = limit else {
        return LimitCheck {
            allowed: true,
            tier,
            used,
            limit,
            remaining: None,
            over_limit_by: 0,
            reason: String::new(),
            extra: 0,
        };
    };
    let remaining = max.saturating_sub(used);
    let over_limit_by = used.saturating_sub(max);
    let allowed = quantity <= remaining;
    let noun = resource.noun();
    let reason = if allowed {
        String::new()
    } else if over_limit_by > 0 {
        format!(
            "the {tier} plan allows {max} {noun}; you have {used}, {over_limit_by} over the limit. \
             Remove {} or upgrade to add more",
            over_limit_by + quantity.min(1),
        )
    } else {
        format!(
            "the {tier} plan allows {max} {noun} and you have {used}; upgrade your plan to add more"
        )
    };
    LimitCheck {
        allowed,
        tier,
        used,
        limit,
        remaining: Some(remaining),
        over_limit_by,
        reason,
        extra: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pro_user_with_extras_may_pass_the_card_limit_and_each_card_beyond_is_counted() {
        let four = Usage {
            cards: 4,
            contacts: 0,
        };
        let without = check_limit_with_extras(Tier::Pro, &four, Resource::Cards, 3, false);
        assert!(!without.allowed);
        let with = check_limit_with_extras(Tier::Pro, &four, Resource::Cards, 3, true);
        assert!(with.allowed && with.reason.is_empty());
        assert_eq!(with.extra, 2, "4 + 3 is 2 beyond 5");
        let seven = Usage {
            cards: 7,
            contacts: 0,
        };
        assert_eq!(
            check_limit_with_extras(Tier::Pro, &seven, Resource::Cards, 1, true).extra,
            1
        );
        // Only PRO cards: FREE and contacts keep their limits.
        assert!(!check_limit_with_extras(Tier::Free, &seven, Resource::Cards, 1, true).allowed);
        assert_eq!(extra_cards(Tier::Pro, 7), 2);
        assert_eq!(extra_cards(Tier::Premium, 70), 0);
        assert_eq!(extra_cards(Tier::Free, 7), 0);
    }

    #[test]
    fn free_user_may_create_a_first_card_but_not_a_second() {
        let none = Usage::default();
        let first = check_limit(Tier::Free, &none, Resource::Cards, 1);
        assert!(first.allowed);
        assert_eq!(first.remaining, Some(1));

        let one = Usage {
            cards: 1,
            contacts: 0,
        };
        let second = check_limit(Tier::Free, &one, Resource::Cards, 1);
        assert!(!second.allowed);
        assert_eq!(second.remaining, Some(0));
        assert_eq!(second.over_limit_by, 0);
        assert!(
            second.reason.contains("allows 1 cards"),
            "{}",
            second.reason
        );
    }

    #[test]
    fn quantity_is_checked_as_a_whole() {
        let usage = Usage {
            cards: 0,
            contacts: 48,
        };
        assert!(check_limit(Tier::Free, &usage, Resource::Contacts, 2).allowed);
        assert!(!check_limit(Tier::Free, &usage, Resource::Contacts, 3).allowed);
    }

    #[test]
    fn unlimited_always_allows() {
        let usage = Usage {
            cards: 10_000,
            contacts: 1_000_000,
        };
        let check = check_limit(Tier::Premium, &usage, Resource::Cards, 1);
        assert!(check.allowed);
        assert_eq!(check.remaining, None);
        assert_eq!(check.limit.as_wire(), -1);
    }

    #[test]
    fn after_a_downgrade_the_overage_is_reported() {
        let usage = Usage {
            cards: 4,
            contacts: 0,
        };
        let check = check_limit(Tier::Free, &usage, Resource::Cards, 1);
        assert!(!check.allowed);
        assert_eq!(check.over_limit_by, 3);
        assert!(
            check.reason.contains("3 over the limit"),
            "{}",
            check.reason
        );
    }
}
