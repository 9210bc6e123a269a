//! Rows through a model: the one way feature rows (a model with one FP32 input of a fixed width) become
//! its input tensor, on the interactive lane ([`Model::infer_rows`]) or the background one ([`Slices`]).

use crate::model::{InferOutput, Model, Pending};
use crate::tensor::{DataType, Tensor, TensorData};
use crate::EngineError;

impl Model {
    /// The values a row of the model's one input takes, if it is one fixed-width FP32 input.
    pub fn row_width(&self) -> Option<usize> {
        match self.manifest().inputs.as_slice() {
            [only] if only.datatype == DataType::Fp32 => only.fixed_row_len(),
            _ => None,
        }
    }

    /// `rows` of `width` values (a row after another) as the model's input: refused unless the model's
    /// one FP32 input takes rows of that width.
    pub fn rows_input(&self, rows: Vec<f32>, width: usize) -> Result<Vec<Tensor>, EngineError> {
        self.check_width(width)?;
        if !rows.len().is_multiple_of(width) {
            return Err(EngineError::InvalidInput {
                name: self.input_name(),
                reason: format!("{} values are not rows of {width}", rows.len()),
            });
        }
        Ok(vec![Tensor {
            name: self.input_name(),
            shape: vec![rows.len() / width, width],
            data: TensorData::Fp32(rows),
        }])
    }

    /// Runs `rows` of `width` values on the interactive lane, as one request.
    pub async fn infer_rows(
        &self,
        rows: Vec<f32>,
        width: usize,
    ) -> Result<InferOutput, EngineError> {
        let inputs = self.rows_input(rows, width)?;
        self.infer(inputs, None).await
    }

    /// The first input's name (a model with none is refused by `check_width` before it is needed).
    fn input_name(&self) -> String {
        self.manifest()
            .inputs
            .first()
            .map_or_else(String::new, |i| i.name.clone())
    }

    fn check_width(&self, width: usize) -> Result<(), EngineError> {
        match self.row_width() {
            Some(w) if w == width && w > 0 => Ok(()),
            Some(w) => Err(EngineError::InvalidInput {
                name: self.input_name(),
                reason: format!("rows of {width} values; the model takes {w}"),
            }),
            None => Err(EngineError::InvalidInput {
                name: self.input_name(),
                reason: "rows go to a model with one fixed-width FP32 input".into(),
            }),
        }
    }
}

/// Rows sent to a model's background lane a slice at a time as they are added (a slice is the model's
/// batch size), so a caller assembling many rows has the first slices running while it assembles the
/// rest; [`Slices::wait`] answers every slice's outputs, in order.
pub struct Slices<'a> {
    model: &'a Model,
    width: usize,
    slice: usize,
    buffer: Vec<f32>,
    pending: Vec<(Pending, usize)>,
}

impl<'a> Slices<'a> {
    /// Rows of `width` values for `model` (refused unless its one FP32 input takes that width).
    pub fn new(model: &'a Model, width: usize) -> Result<Slices<'a>, EngineError> {
        model.check_width(width)?;
        let slice = model.background_slice_rows();
        Ok(Slices {
            model,
            width,
            slice,
            buffer: Vec::with_capacity(slice * width),
            pending: Vec::new(),
        })
    }

    /// Adds a row (`width` values); a full slice is queued.
    pub fn push(&mut self, row: impl IntoIterator<Item = f32>) -> Result<(), EngineError> {
        self.buffer.extend(row);
        if self.buffer.len() >= self.slice * self.width {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), EngineError> {
        let rows = std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(self.slice * self.width),
        );
        let n = rows.len() / self.width;
        let inputs = self.model.rows_input(rows, self.width)?;
        self.pending
            .push((self.model.enqueue_background(inputs)?, n));
        Ok(())
    }

    /// Queues what is left, then blocks the calling thread (never a runtime's) until every slice has run:
    /// each slice's outputs and rows, in order.
    pub fn wait(mut self) -> Result<Vec<(InferOutput, usize)>, EngineError> {
        if !self.buffer.is_empty() {
            self.send()?;
        }
        self.pending
            .into_iter()
            .map(|(slice, n)| slice.wait().map(|out| (out, n)))
            .collect()
    }
}
