//! An order at checkout and what a coupon takes off it.
//!
//! Pure maths, integer cents only (never floats): which part of the order a
//! coupon applies to, whether it reaches the minimum spend, and the
//! discount. The bounds checked in [`RedeemRequest::validate`] keep every
//! sum far below `i64::MAX` (500 lines x 10^12 cents x 10^4 pieces fits in
//! an i128, and the eligible amount is capped by the order total), so the
//! arithmetic below cannot overflow.

use serde::Deserialize;

use super::ValidationError;
use super::campaign::{AppliesTo, Discount, MAX_CENTS};

/// At most this many lines per order.
pub const MAX_ITEMS: usize = 500;
/// At most this many pieces of one line.
pub const MAX_QUANTITY: i64 = 10_000;
/// Order ids and product/category ids: 1..=128 characters.
pub const MAX_ID_LEN: usize = 128;

/// Body of `POST /v1/coupons/{id}/redeem`, exactly as the wire carries it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemRequest {
    #[schema(min_length = 1, max_length = 128)]
    pub order_id: String,
    #[schema(minimum = 0, maximum = 1_000_000_000_000i64)]
    pub order_total_cents: i64,
    /// Without items the whole total is eligible only for a coupon with no `applies_to` restriction.
    #[schema(max_items = 500)]
    pub items: Option<Vec<OrderLineRequest>>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineRequest {
    #[schema(min_length = 1, max_length = 128)]
    pub product_id: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    pub category_id: Option<String>,
    #[schema(minimum = 0, maximum = 1_000_000_000_000i64)]
    pub unit_price_cents: i64,
    #[schema(minimum = 1, maximum = 10_000)]
    pub quantity: i64,
}

/// Body of `POST /v1/coupons/{id}/release`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    #[schema(min_length = 1, max_length = 128)]
    pub order_id: String,
}

/// A checked order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: String,
    pub total_cents: i64,
    /// `None` when the app sent no items (only the total is known).
    pub items: Option<Vec<OrderLine>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub product_id: Option<String>,
    pub category_id: Option<String>,
    pub unit_price_cents: i64,
    pub quantity: i64,
}

impl OrderLine {
    pub fn line_cents(&self) -> i64 {
        self.unit_price_cents.saturating_mul(self.quantity)
    }
}

/// An order id: 1..=128 printable characters.
pub fn order_id(field: &str, raw: &str) -> Result<String, ValidationError> {
    let n = raw.chars().count();
    if n == 0 || n > MAX_ID_LEN || raw.chars().any(char::is_control) {
        return Err(ValidationError::new(field, format!("must be 1 to {MAX_ID_LEN} printable characters")));
    }
    Ok(raw.to_owned())
}

fn optional_id(field: &str, raw: Option<String>) -> Result<Option<String>, ValidationError> {
    raw.map(|id| order_id(field, &id)).transpose()
}

impl RedeemRequest {
    pub fn validate(self) -> Result<Order, ValidationError> {
        let order_id = order_id("order_id", &self.order_id)?;
        if !(0..=MAX_CENTS).contains(&self.order_total_cents) {
            return Err(ValidationError::new("order_total_cents", format!("must be between 0 and {MAX_CENTS}")));
        }
        let items = match self.items {
            None => None,
            Some(lines) if lines.len() > MAX_ITEMS => {
                return Err(ValidationError::new("items", format!("at most {MAX_ITEMS} lines")));
            }
            Some(lines) => Some(
                lines
                    .into_iter()
                    .enumerate()
                    .map(|(i, l)| {
                        if !(0..=MAX_CENTS).contains(&l.unit_price_cents) {
                            return Err(ValidationError::new(
                                format!("items[{i}].unit_price_cents"),
                                format!("must be between 0 and {MAX_CENTS}"),
                            ));
                        }
                        if !(1..=MAX_QUANTITY).contains(&l.quantity) {
                            return Err(ValidationError::new(
                                format!("items[{i}].quantity"),
                                format!("must be between 1 and {MAX_QUANTITY}"),
                            ));
                        }
                        Ok(OrderLine {
                            product_id: optional_id(&format!("items[{i}].product_id"), l.product_id)?,
                            category_id: optional_id(&format!("items[{i}].category_id"), l.category_id)?,
                            unit_price_cents: l.unit_price_cents,
                            quantity: l.quantity,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Order { order_id, total_cents: self.order_total_cents, items })
    }
}

impl ReleaseRequest {
    pub fn validate(self) -> Result<String, ValidationError> {
        order_id("order_id", &self.order_id)
    }
}

/// Why a coupon does not apply to an order (`422 not_applicable`, `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotApplicable {
    MinSpend,
    NoEligibleItems,
}

impl NotApplicable {
    pub fn as_str(self) -> &'static str {
        match self {
            NotApplicable::MinSpend => "min_spend",
            NotApplicable::NoEligibleItems => "no_eligible_items",
        }
    }
}

/// What a coupon takes off an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priced {
    /// The part of the order the coupon applies to.
    pub eligible_cents: i64,
    pub discount_cents: i64,
}

impl AppliesTo {
    /// Empty lists: the whole order is eligible.
    pub fn is_unrestricted(&self) -> bool {
        self.product_ids.is_empty() && self.category_ids.is_empty()
    }

    /// A line matches when its product or its category is listed.
    pub fn matches(&self, line: &OrderLine) -> bool {
        line.product_id.as_ref().is_some_and(|p| self.product_ids.contains(p))
            || line.category_id.as_ref().is_some_and(|c| self.category_ids.contains(c))
    }
}

/// The eligible amount: the order total for an unrestricted coupon, else the
/// sum of the matching lines (none without items), never above the total.
pub fn eligible_cents(applies_to: &AppliesTo, order: &Order) -> i64 {
    if applies_to.is_unrestricted() {
        return order.total_cents;
    }
    let matching: i128 = order
        .items
        .iter()
        .flatten()
        .filter(|l| applies_to.matches(l))
        .map(|l| i128::from(l.unit_price_cents) * i128::from(l.quantity))
        .sum();
    // Lines summing above the stated total are the app's inconsistency; the
    // coupon never takes more than the order is worth.
    matching.min(i128::from(order.total_cents)) as i64
}

/// The discount on `eligible` cents: fixed = min(amount, eligible); percent
/// = floor(eligible * percent / 100), capped at `max_cents`.
pub fn discount_cents(discount: &Discount, eligible: i64) -> i64 {
    let eligible = eligible.max(0);
    match *discount {
        Discount::Fixed { amount_cents } => amount_cents.clamp(0, eligible),
        Discount::Percent { percent, max_cents } => {
            let raw = (i128::from(eligible) * i128::from(percent.clamp(0, 100)) / 100) as i64;
            match max_cents {
                Some(cap) => raw.min(cap.max(0)),
                None => raw,
            }
        }
    }
}

/// Prices an order with a coupon's terms, or says why it does not apply.
pub fn price(
    discount: &Discount,
    min_spend_cents: i64,
    applies_to: &AppliesTo,
    order: &Order,
) -> Result<Priced, NotApplicable> {
    let eligible = eligible_cents(applies_to, order);
    if !applies_to.is_unrestricted() && eligible == 0 {
        return Err(NotApplicable::NoEligibleItems);
    }
    if eligible < min_spend_cents {
        return Err(NotApplicable::MinSpend);
    }
    Ok(Priced { eligible_cents: eligible, discount_cents: discount_cents(discount, eligible) })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn line(product: &str, category: &str, price: i64, qty: i64) -> OrderLine {
        OrderLine {
            product_id: Some(product.into()).filter(|p: &String| !p.is_empty()),
            category_id: Some(category.into()).filter(|c: &String| !c.is_empty()),
            unit_price_cents: price,
            quantity: qty,
        }
    }

    fn order(total: i64, items: Option<Vec<OrderLine>>) -> Order {
        Order { order_id: "o-1".into(), total_cents: total, items }
    }

    fn shoes() -> AppliesTo {
        AppliesTo { product_ids: vec![], category_ids: vec!["shoes".into()] }
    }

    const FIXED_2000: Discount = Discount::Fixed { amount_cents: 2000 };

    #[test]
    fn table_of_prices() {
        let pct = |p, cap| Discount::Percent { percent: p, max_cents: cap };
        let unrestricted = AppliesTo::default();
        let api_example = order(25900, Some(vec![line("p1", "shoes", 12950, 2)]));
        let mixed = order(30000, Some(vec![line("p1", "shoes", 10000, 1), line("p2", "hats", 20000, 1)]));
        let by_product = AppliesTo { product_ids: vec!["p2".into()], category_ids: vec![] };
        // (discount, min spend, applies_to, order, expected)
        type Case = (Discount, i64, AppliesTo, Order, Result<Priced, NotApplicable>);
        let cases: Vec<Case> = vec![
            // API.md's example: 20 off 100 on shoes.
            (
                FIXED_2000,
                10000,
                shoes(),
                api_example.clone(),
                Ok(Priced { eligible_cents: 25900, discount_cents: 2000 }),
            ),
            // Only the matching line counts towards the minimum spend.
            (FIXED_2000, 15000, shoes(), mixed.clone(), Err(NotApplicable::MinSpend)),
            (FIXED_2000, 10000, shoes(), mixed.clone(), Ok(Priced { eligible_cents: 10000, discount_cents: 2000 })),
            (
                FIXED_2000,
                0,
                by_product.clone(),
                mixed.clone(),
                Ok(Priced { eligible_cents: 20000, discount_cents: 2000 }),
            ),
            // Fixed never exceeds what it applies to.
            (
                Discount::Fixed { amount_cents: 5000 },
                0,
                unrestricted.clone(),
                order(1234, None),
                Ok(Priced { eligible_cents: 1234, discount_cents: 1234 }),
            ),
            // Percent rounds down; the cap applies.
            (
                pct(15, None),
                0,
                unrestricted.clone(),
                order(999, None),
                Ok(Priced { eligible_cents: 999, discount_cents: 149 }),
            ),
            (
                pct(50, Some(3000)),
                0,
                unrestricted.clone(),
                order(10000, None),
                Ok(Priced { eligible_cents: 10000, discount_cents: 3000 }),
            ),
            (
                pct(100, None),
                0,
                unrestricted.clone(),
                order(1, None),
                Ok(Priced { eligible_cents: 1, discount_cents: 1 }),
            ),
            // A restricted coupon needs items that match.
            (FIXED_2000, 0, shoes(), order(25900, None), Err(NotApplicable::NoEligibleItems)),
            (
                FIXED_2000,
                0,
                shoes(),
                order(100, Some(vec![line("p9", "hats", 100, 1)])),
                Err(NotApplicable::NoEligibleItems),
            ),
            // Unrestricted: the order total, items or not; min spend on it.
            (FIXED_2000, 10000, unrestricted.clone(), order(9999, None), Err(NotApplicable::MinSpend)),
            (FIXED_2000, 0, unrestricted.clone(), order(0, None), Ok(Priced { eligible_cents: 0, discount_cents: 0 })),
            // Lines worth more than the stated total: capped by the total.
            (
                pct(10, None),
                0,
                shoes(),
                order(5000, Some(vec![line("p1", "shoes", 9000, 1)])),
                Ok(Priced { eligible_cents: 5000, discount_cents: 500 }),
            ),
        ];
        for (i, (d, min, applies, o, want)) in cases.into_iter().enumerate() {
            assert_eq!(price(&d, min, &applies, &o), want, "case {i}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let req = |json: &str| serde_json::from_str::<RedeemRequest>(json).unwrap().validate();
        assert_eq!(req(r#"{"order_id":"","order_total_cents":1}"#).unwrap_err().field, "order_id");
        assert_eq!(req(r#"{"order_id":"o","order_total_cents":-1}"#).unwrap_err().field, "order_total_cents");
        let e = req(r#"{"order_id":"o","order_total_cents":1,"items":[{"unit_price_cents":1,"quantity":0}]}"#);
        assert_eq!(e.unwrap_err().field, "items[0].quantity");
        let e = req(
            r#"{"order_id":"o","order_total_cents":1,"items":[{"unit_price_cents":1,"quantity":1,"product_id":""}]}"#,
        );
        assert_eq!(e.unwrap_err().field, "items[0].product_id");
        assert!(serde_json::from_str::<RedeemRequest>(r#"{"order_id":"o","order_total_cents":1,"x":1}"#).is_err());
        assert!(req(r#"{"order_id":"o-123","order_total_cents":25900}"#).is_ok());
    }

    fn discounts() -> impl Strategy<Value = Discount> {
        prop_oneof![
            (1..=MAX_CENTS).prop_map(|amount_cents| Discount::Fixed { amount_cents }),
            (1i64..=100, proptest::option::of(0..=MAX_CENTS))
                .prop_map(|(percent, max_cents)| Discount::Percent { percent, max_cents }),
        ]
    }

    fn lines() -> impl Strategy<Value = Vec<OrderLine>> {
        proptest::collection::vec(
            (proptest::option::of("p[0-3]"), proptest::option::of("c[0-3]"), 0..=1_000_000_000i64, 1..=MAX_QUANTITY)
                .prop_map(|(product_id, category_id, unit_price_cents, quantity)| OrderLine {
                    product_id,
                    category_id,
                    unit_price_cents,
                    quantity,
                }),
            0..20,
        )
    }

    proptest! {
        #[test]
        fn discount_stays_within_eligible_and_cap(
            d in discounts(),
            min in 0..=1_000_000i64,
            products in proptest::collection::vec("p[0-3]", 0..3),
            categories in proptest::collection::vec("c[0-3]", 0..3),
            total in 0..=MAX_CENTS,
            items in proptest::option::of(lines()),
        ) {
            let applies = AppliesTo { product_ids: products, category_ids: categories };
            let o = order(total, items);
            match price(&d, min, &applies, &o) {
                Ok(p) => {
                    prop_assert!(p.discount_cents >= 0);
                    prop_assert!(p.discount_cents <= p.eligible_cents);
                    prop_assert!(p.eligible_cents <= total);
                    prop_assert!(p.eligible_cents >= min);
                    match d {
                        Discount::Fixed { amount_cents } => prop_assert!(p.discount_cents <= amount_cents),
                        Discount::Percent { max_cents: Some(cap), .. } => prop_assert!(p.discount_cents <= cap),
                        Discount::Percent { percent, max_cents: None } => {
                            // floor: within one cent of the exact value, never above it.
                            let exact = i128::from(p.eligible_cents) * i128::from(percent);
                            prop_assert!(i128::from(p.discount_cents) * 100 <= exact);
                            prop_assert!(exact - i128::from(p.discount_cents) * 100 < 100);
                        }
                    }
                }
                Err(NotApplicable::MinSpend) => prop_assert!(eligible_cents(&applies, &o) < min),
                Err(NotApplicable::NoEligibleItems) => {
                    prop_assert!(!applies.is_unrestricted());
                    prop_assert_eq!(eligible_cents(&applies, &o), 0);
                }
            }
        }

        #[test]
        fn more_eligible_never_means_less_discount(d in discounts(), a in 0..=MAX_CENTS, b in 0..=MAX_CENTS) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(discount_cents(&d, lo) <= discount_cents(&d, hi));
        }
    }
}
