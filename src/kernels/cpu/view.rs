//! A strided matrix view into a slice: how every GEMM operand is passed, so transposes cost nothing.

/// A strided matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Row-major rows × `ld` storage starting at `data[0]`.
    pub fn rows(data: &'a [f32], ld: usize) -> Self {
        View {
            data,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose of a row-major view.
    pub fn t(self) -> Self {
        View {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }

    pub(crate) fn reaches(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}
