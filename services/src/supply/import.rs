//! Orders and deliveries imported from another system: one row per order line, one row per receipt, all or
//! nothing. A refusal names every bad row by its place in the file (`row`, from 1), whichever check found
//! it: the rows' own values, an order's rows that disagree, a reference already used, an unknown supplier
//! or material, a line the order does not have.

use std::collections::BTreeMap;

use mercator_store::{
    check_delivery, DeliveryImportRow, FieldErrors, NewOrder, NewOrderDelivery, NewOrderLine,
    Order, OrderImportRow, RowError, StoreError,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Supply, SupplyError};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportedOrders {
    pub orders: usize,
    pub lines: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportedDeliveries {
    pub deliveries: usize,
    /// Orders every line of which is now received in full.
    pub orders_delivered: usize,
}

/// Problems by row, merged: one row may fail several checks.
#[derive(Default)]
struct Problems(BTreeMap<usize, FieldErrors>);

impl Problems {
    fn add(&mut self, row: usize, field: &str, message: impl Into<String>) {
        self.0.entry(row).or_default().add(field, message);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn error(self) -> SupplyError {
        let rows = self
            .0
            .into_iter()
            .map(|(row, errors)| RowError { row, errors })
            .collect();
        StoreError::Rows(rows).into()
    }
}

impl Supply {
    /// Writes the orders the rows make, all or nothing.
    pub async fn import_orders(
        &self,
        org: &str,
        rows: Vec<OrderImportRow>,
    ) -> Result<ImportedOrders, SupplyError> {
        let mut problems = Problems::default();
        // Each order: its rows' places, in the file's order.
        let mut groups: Vec<(OrderImportRow, Vec<usize>)> = Vec::new();
        let mut by_reference: BTreeMap<String, usize> = BTreeMap::new();
        for (i, row) in rows.iter().enumerate() {
            match by_reference.get(&row.reference) {
                None => {
                    by_reference.insert(row.reference.clone(), groups.len());
                    groups.push((row.clone(), vec![i]));
                }
                Some(&g) => {
                    let (first, places) = &mut groups[g];
                    let at = places[0] + 1;
                    for (field, same) in [
                        ("supplier_id", first.supplier_id == row.supplier_id),
                        ("currency", first.currency == row.currency),
                        ("ordered_on", first.ordered_on == row.ordered_on),
                    ] {
                        if !same {
                            problems.add(
                                i + 1,
                                field,
                                format!("differs from the order's first row (row {at})"),
                            );
                        }
                    }
                    places.push(i);
                }
            }
        }
        let references: Vec<&str> = by_reference.keys().map(String::as_str).collect();
        for order in self.store.orders_by_reference(org, &references).await? {
            if let Some(&g) = order.reference.as_ref().and_then(|r| by_reference.get(r)) {
                problems.add(
                    groups[g].1[0] + 1,
                    "reference",
                    "an order with this reference exists in the organization",
                );
            }
        }
        let lines = rows.len();
        let new: Vec<NewOrder> = groups
            .iter()
            .map(|(first, places)| NewOrder {
                supplier_id: first.supplier_id.clone(),
                reference: Some(first.reference.clone()),
                currency: first.currency.clone(),
                ordered_on: first.ordered_on,
                lines: places
                    .iter()
                    .map(|&i| NewOrderLine {
                        material_id: rows[i].material_id.clone(),
                        quantity: rows[i].quantity,
                        unit_price: rows[i].unit_price,
                        promised_date: rows[i].promised_date,
                    })
                    .collect(),
                rfq_id: None,
            })
            .collect();
        // Checked whatever was found above, so one answer names every bad row.
        let today = self.clock.now().date_naive();
        let checked = match self.store.check_orders(org, new, today).await {
            Ok(orders) => Some(orders),
            Err(StoreError::Rows(bad)) => {
                // The store names an order by its place and a line's field as `lines[j].field`: back
                // to the file's rows.
                for RowError { row, errors } in bad {
                    let Some(places) = row.checked_sub(1).and_then(|g| groups.get(g)).map(|g| &g.1)
                    else {
                        continue;
                    };
                    for (field, messages) in errors.0 {
                        let (at, field) = line_field(&field)
                            .and_then(|(j, f)| Some((*places.get(j)?, f.to_string())))
                            .unwrap_or((places[0], field));
                        for message in messages {
                            problems.add(at + 1, &field, message);
                        }
                    }
                }
                None
            }
            Err(e) => return Err(e.into()),
        };
        match checked {
            Some(orders) if problems.is_empty() => {
                let orders = self.store.insert_orders(org, orders).await?;
                Ok(ImportedOrders {
                    orders: orders.len(),
                    lines,
                })
            }
            _ => Err(problems.error()),
        }
    }

    /// Receives the deliveries the rows describe, all or nothing; orders received in full become
    /// `delivered`.
    pub async fn import_deliveries(
        &self,
        org: &str,
        rows: Vec<DeliveryImportRow>,
    ) -> Result<ImportedDeliveries, SupplyError> {
        let mut references: Vec<&str> = rows.iter().map(|r| r.order_reference.as_str()).collect();
        references.sort_unstable();
        references.dedup();
        let orders: BTreeMap<String, Order> = self
            .store
            .orders_by_reference(org, &references)
            .await?
            .into_iter()
            .filter_map(|o| Some((o.reference.clone()?, o)))
            .collect();
        let mut problems = Problems::default();
        let mut new = Vec::with_capacity(rows.len());
        for (i, row) in rows.into_iter().enumerate() {
            let Some(order) = orders.get(&row.order_reference) else {
                problems.add(
                    i + 1,
                    "order_reference",
                    "no order with this reference in the organization",
                );
                continue;
            };
            let delivery = NewOrderDelivery {
                line_id: row.line,
                delivered_on: row.delivered_on,
                quantity: row.quantity,
                rejected_quantity: row.rejected_quantity,
            };
            for (field, messages) in check_delivery(order, &delivery).0 {
                // The store's `line_id` is the file's `line`.
                let field = if field == "line_id" { "line" } else { &field };
                for message in messages {
                    problems.add(i + 1, field, message);
                }
            }
            new.push((order, delivery));
        }
        if !problems.is_empty() {
            return Err(problems.error());
        }
        let (deliveries, delivered) = self.store.receive_deliveries(org, new).await?;
        Ok(ImportedDeliveries {
            deliveries: deliveries.len(),
            orders_delivered: delivered.len(),
        })
    }
}

/// `lines[3].quantity` → (3, "quantity").
fn line_field(field: &str) -> Option<(usize, &str)> {
    let rest = field.strip_prefix("lines[")?;
    let (index, field) = rest.split_once("].")?;
    Some((index.parse().ok()?, field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_field_names_its_line() {
        assert_eq!(line_field("lines[3].quantity"), Some((3, "quantity")));
        assert_eq!(line_field("lines[0].material_id"), Some((0, "material_id")));
        assert_eq!(line_field("supplier_id"), None);
        assert_eq!(line_field("lines[x].quantity"), None);
    }
}
