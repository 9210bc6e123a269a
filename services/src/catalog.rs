//! The catalogue (materials and suppliers): kept in the store, and the attribute caches predictions read
//! kept in step with every change.

use std::sync::Arc;

use mercator_store::{Entry, ListParams, Listed, Material, Store, StoreError, Supplier};

use crate::predict::Predictions;

/// A catalogue entry whose attributes predictions cache.
pub trait Cataloged: Entry {
    /// Drops the entry from the predictions' cache: its next read is the store's.
    fn forget(predictions: &Predictions, id: &str);
}

impl Cataloged for Material {
    fn forget(predictions: &Predictions, id: &str) {
        predictions.forget_material(id);
    }
}

impl Cataloged for Supplier {
    fn forget(predictions: &Predictions, id: &str) {
        predictions.forget_supplier(id);
    }
}

pub struct Catalog {
    store: Store,
    predictions: Arc<Predictions>,
}

impl Catalog {
    pub fn new(store: Store, predictions: Arc<Predictions>) -> Catalog {
        Catalog { store, predictions }
    }

    /// A page of the organization's entries matching `filter`.
    pub async fn list<E: Cataloged>(
        &self,
        org: &str,
        filter: &E::Filter,
        page: &ListParams,
    ) -> Result<Listed<E>, StoreError> {
        self.store.entries(org, filter, page).await
    }

    pub async fn get<E: Cataloged>(&self, org: &str, id: &str) -> Result<E, StoreError> {
        self.store.entry(org, id).await
    }

    /// A new entry; its code is unique in the organization (a conflict otherwise).
    pub async fn create<E: Cataloged>(&self, org: &str, new: E::New) -> Result<E, StoreError> {
        self.store.create_entry(org, new).await
    }

    /// Changes the fields given; answers the entry before and after.
    pub async fn update<E: Cataloged>(
        &self,
        org: &str,
        id: &str,
        patch: E::Patch,
    ) -> Result<(E, E), StoreError> {
        let before = self.store.entry(org, id).await?;
        let after = self.store.update_entry(org, id, patch).await?;
        E::forget(&self.predictions, id);
        Ok((before, after))
    }

    /// Deletes an entry no price refers to; answers it as it was.
    pub async fn delete<E: Cataloged>(&self, org: &str, id: &str) -> Result<E, StoreError> {
        let before = self.store.entry(org, id).await?;
        self.store.delete_entry::<E>(org, id).await?;
        E::forget(&self.predictions, id);
        Ok(before)
    }
}
