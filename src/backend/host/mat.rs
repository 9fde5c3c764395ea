//! Strided matrix views for the host GEMM: element `(i, j)` of a view is
//! `data[i·rs + j·cs]`, so a transpose is a swap of strides and a column block of a wider
//! tensor (one direction's half of `y`) is a view with `rs` larger than `cols`.

/// A read-only strided matrix view.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

/// A mutable strided matrix view.
#[derive(Debug)]
pub(crate) struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

impl<'a, T> Mat<'a, T> {
    /// A dense row-major `rows × cols` matrix at the start of `data`.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }
    /// `rows × cols` with row stride `rs` (a column block of a wider row-major matrix).
    pub fn strided(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        let m = Mat { data, rows, cols, rs, cs: 1 };
        assert!(span(rows, cols, rs, 1) <= m.data.len(), "Mat view out of bounds");
        m
    }
    /// The transpose, without moving data.
    pub fn t(self) -> Self {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    /// Element `(i, j)`.
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> T
    where
        T: Copy,
    {
        self.data[i * self.rs + j * self.cs]
    }
}

impl<'a, T> MatMut<'a, T> {
    /// A dense row-major `rows × cols` matrix at the start of `data`.
    pub fn new(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }
    /// `rows × cols` with row stride `rs`.
    pub fn strided(data: &'a mut [T], rows: usize, cols: usize, rs: usize) -> Self {
        assert!(span(rows, cols, rs, 1) <= data.len(), "MatMut view out of bounds");
        MatMut { data, rows, cols, rs, cs: 1 }
    }
    /// Element `(i, j)`, mutable.
    #[inline]
    pub fn at_mut(&mut self, i: usize, j: usize) -> &mut T {
        &mut self.data[i * self.rs + j * self.cs]
    }
}
