//! Purchase orders and deliveries: created by hand or from an RFQ's awards (one order per awarded
//! supplier, at the awarded quantities and prices, promised as quoted); a delivery's receipt moves the
//! order to `delivered` once every line is received in full (rejected quantities aside).

use std::collections::BTreeMap;

use mercator_store::{
    FieldErrors, ListParams, Listed, NewOrder, NewOrderDelivery, NewOrderLine, Order,
    OrderDelivery, OrderFilter, RfqStatus,
};

use super::{Supply, SupplyError};

impl Supply {
    pub async fn create_orders(
        &self,
        org: &str,
        new: Vec<NewOrder>,
    ) -> Result<Vec<Order>, SupplyError> {
        let today = self.clock.now().date_naive();
        Ok(self.store.create_orders(org, new, today).await?)
    }

    /// One order per supplier awarded in the RFQ, once: an RFQ's orders are made when it is awarded in
    /// full or in part, and not again.
    pub async fn orders_from_award(
        &self,
        org: &str,
        rfq_id: &str,
    ) -> Result<Vec<Order>, SupplyError> {
        let rfq = self.store.rfq(org, rfq_id).await?;
        if !matches!(rfq.status, RfqStatus::Awarded | RfqStatus::PartiallyAwarded)
            || rfq.awards.is_empty()
        {
            return Err(SupplyError::State(format!(
                "the RFQ is {}: orders are made from its awards",
                rfq.status.as_str()
            )));
        }
        let made = self
            .store
            .orders(
                org,
                &OrderFilter {
                    rfq_id: Some(rfq.id.clone()),
                    ..OrderFilter::default()
                },
                &ListParams {
                    limit: 1,
                    ..ListParams::default()
                },
            )
            .await?;
        if !made.items.is_empty() {
            return Err(SupplyError::State(
                "orders were already made from this RFQ's awards".into(),
            ));
        }
        let quotes = self.store.quotes(org, &rfq.id, true).await?;
        let mut by_supplier: BTreeMap<&str, Vec<NewOrderLine>> = BTreeMap::new();
        for award in &rfq.awards {
            let line = rfq.line(&award.line_id);
            let promised = quotes
                .iter()
                .find(|q| q.id == award.quote_id)
                .and_then(|q| q.lines.iter().find(|l| l.line_id == award.line_id))
                .map(|l| l.promised_date)
                .or(line.map(|l| l.needed_by));
            let (Some(line), Some(promised_date)) = (line, promised) else {
                continue;
            };
            by_supplier
                .entry(award.supplier_id.as_str())
                .or_default()
                .push(NewOrderLine {
                    material_id: line.material_id.clone(),
                    quantity: award.quantity,
                    unit_price: award.unit_price,
                    promised_date,
                });
        }
        let today = self.clock.now().date_naive();
        let new: Vec<NewOrder> = by_supplier
            .into_iter()
            .map(|(supplier, lines)| NewOrder {
                supplier_id: supplier.to_string(),
                reference: None,
                currency: rfq.currency.clone(),
                ordered_on: Some(today),
                lines,
                rfq_id: Some(rfq.id.clone()),
            })
            .collect();
        Ok(self.store.create_orders(org, new, today).await?)
    }

    pub async fn orders(
        &self,
        org: &str,
        filter: &OrderFilter,
        page: &ListParams,
    ) -> Result<Listed<Order>, SupplyError> {
        Ok(self.store.orders(org, filter, page).await?)
    }

    pub async fn order(&self, org: &str, id: &str) -> Result<Order, SupplyError> {
        Ok(self.store.order(org, id).await?)
    }

    /// Cancels an open order.
    pub async fn cancel_order(&self, org: &str, id: &str) -> Result<(Order, Order), SupplyError> {
        let before = self.store.order(org, id).await?;
        if before.status != "open" {
            return Err(SupplyError::State(format!(
                "the order is {}: only an open order is cancelled",
                before.status
            )));
        }
        let after = self.store.set_order_status(org, id, "cancelled").await?;
        Ok((before, after))
    }

    /// Receives deliveries against an order (all or nothing); the order is `delivered` once every
    /// line's accepted quantity reaches its ordered quantity.
    pub async fn deliver(
        &self,
        org: &str,
        order_id: &str,
        new: Vec<NewOrderDelivery>,
    ) -> Result<(Order, Vec<OrderDelivery>), SupplyError> {
        let order = self.store.order(org, order_id).await?;
        if order.status == "cancelled" {
            return Err(SupplyError::State(
                "the order is cancelled: it takes no deliveries".into(),
            ));
        }
        if new.is_empty() {
            return Err(FieldErrors::one("deliveries", "give at least one delivery").into());
        }
        let (written, delivered) = self
            .store
            .receive_deliveries(org, new.into_iter().map(|d| (&order, d)).collect())
            .await?;
        let order = if delivered.is_empty() {
            order
        } else {
            self.store.order(org, &order.id).await?
        };
        Ok((order, written))
    }

    pub async fn deliveries(
        &self,
        org: &str,
        order_id: &str,
    ) -> Result<Vec<OrderDelivery>, SupplyError> {
        self.store.order(org, order_id).await?;
        Ok(self.store.order_deliveries(org, order_id).await?)
    }
}
