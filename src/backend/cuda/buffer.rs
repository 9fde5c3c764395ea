//! Device buffers: [`CudaBuf`], the backend's [`Buffer`]; [`DevBuf`], the driver's own
//! storage-typed memory; and [`View`], the unchecked pointer plus length the driver computes
//! with after checking every offset against it.

use crate::backend::Buffer;
use crate::element::{Dtype, Element};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::any::Any;

/// A buffer of `T` in a CUDA device's memory: the CUDA backend's `Buf`.
///
/// Make one with [`Cuda::upload`](super::Cuda::upload) or [`Cuda::zeros`](super::Cuda::zeros),
/// read it back with [`Cuda::download`](super::Cuda::download).
pub struct CudaBuf<T> {
    pub(crate) slice: CudaSlice<T>,
}

impl<T> std::fmt::Debug for CudaBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBuf({} elements)", self.slice.len())
    }
}

impl<T> Buffer for CudaBuf<T> {
    fn len(&self) -> usize {
        self.slice.len()
    }
}

impl<T> CudaBuf<T> {
    /// The underlying cudarc slice, to pass to other CUDA code.
    pub fn as_cuda_slice(&self) -> &CudaSlice<T> {
        &self.slice
    }
    /// Wraps a cudarc slice allocated on the same device as the backend it is given to.
    pub fn from_cuda_slice(slice: CudaSlice<T>) -> Self {
        CudaBuf { slice }
    }
}

/// Memory the driver owns: its address, and what keeps it allocated (a device allocation, or
/// the host memory that stands in for one on the host emulation), freed when dropped.
pub(crate) struct RawBuf {
    ptr: u64,
    _owner: Box<dyn Any + Send + Sync>,
}

impl RawBuf {
    /// `owner` keeps the memory at `ptr` allocated until it is dropped.
    pub fn new(ptr: u64, owner: Box<dyn Any + Send + Sync>) -> RawBuf {
        RawBuf { ptr, _owner: owner }
    }

    /// Its address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
}

impl std::fmt::Debug for RawBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawBuf({:#x})", self.ptr)
    }
}

/// `len` elements of storage type `ty` (f32, f16 or bf16) the driver allocated: the buffers of
/// a reserve, a plan's weights and a call's temporaries.
pub(crate) struct DevBuf {
    raw: RawBuf,
    len: usize,
    ty: Dtype,
}

impl DevBuf {
    /// `raw` holding `len` elements of `ty`.
    pub fn new(raw: RawBuf, len: usize, ty: Dtype) -> DevBuf {
        DevBuf { raw, len, ty }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The storage type.
    pub fn ty(&self) -> Dtype {
        self.ty
    }

    /// The whole buffer. The buffer must outlive every use of the view (the driver keeps it in
    /// the reserve or in the call's temporaries until the call's work is enqueued and ordered).
    pub fn view(&self) -> View {
        View { ptr: self.raw.ptr, len: self.len, ty: self.ty }
    }
}

impl std::fmt::Debug for DevBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DevBuf({} {:?})", self.len, self.ty)
    }
}

/// `len` elements of type `ty` (f32, f16 or bf16) at device address `ptr` (0 for none): what
/// kernels and cuBLAS take. Every sub-view is checked against its parent, so a view never
/// reaches outside the allocation it was taken from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    pub ptr: u64,
    pub len: usize,
    pub ty: Dtype,
}

impl View {
    /// No buffer: a null pointer for an optional kernel argument.
    pub const NULL: View = View { ptr: 0, len: 0, ty: Dtype::F32 };

    /// The whole of `s`. The slice must outlive every use of the view (the driver keeps it in
    /// the reserve or in the call's temporaries until the call's work is enqueued and ordered).
    pub fn of<T: Element + cudarc::driver::DeviceRepr>(s: &CudaSlice<T>, stream: &CudaStream) -> View {
        let (ptr, _sync) = s.device_ptr(stream);
        View { ptr, len: s.len(), ty: T::DTYPE }
    }

    /// Elements `off..off + len`.
    #[track_caller]
    pub fn at(self, off: usize, len: usize) -> View {
        assert!(off.checked_add(len).is_some_and(|e| e <= self.len), "view {off}+{len} outside a buffer of {}", self.len);
        View { ptr: if len == 0 { self.ptr } else { self.ptr + (off * self.ty.size()) as u64 }, len, ty: self.ty }
    }

    /// `rows` rows of `width` elements, `stride` apart, the first at `off`: returns the view
    /// from `off` to the end of the last row.
    #[track_caller]
    pub fn strided(self, off: usize, rows: usize, stride: usize, width: usize) -> View {
        assert!(width <= stride && rows > 0);
        self.at(off, (rows - 1) * stride + width)
    }

    /// The view as a dense row-major `[rows, cols]` matrix.
    #[track_caller]
    pub fn mat(self, rows: usize, cols: usize) -> DevMat {
        assert!(rows * cols <= self.len, "[{rows}, {cols}] outside a view of {}", self.len);
        DevMat { ptr: self.ptr, rows, cols, ld: cols, t: false, ty: self.ty }
    }

    /// The view as a row-major `[rows, cols]` matrix whose rows start `ld ≥ cols` elements
    /// apart: a block of columns of a wider matrix, the view starting at its first element.
    #[track_caller]
    pub fn mat_strided(self, rows: usize, cols: usize, ld: usize) -> DevMat {
        let end = if rows == 0 { 0 } else { (rows - 1) * ld + cols };
        assert!(cols <= ld && end <= self.len, "[{rows}, {cols}] with rows {ld} apart outside a view of {}", self.len);
        DevMat { ptr: self.ptr, rows, cols, ld, t: false, ty: self.ty }
    }
}

/// A row-major matrix in device memory, `[rows, cols]` as stored with rows `ld` elements apart,
/// used transposed when `t`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DevMat {
    pub ptr: u64,
    pub rows: usize,
    pub cols: usize,
    /// Elements from the start of a stored row to the next (`cols` for a dense matrix).
    pub ld: usize,
    pub t: bool,
    pub ty: Dtype,
}

impl DevMat {
    pub fn t(self) -> DevMat {
        DevMat { t: !self.t, ..self }
    }
    /// Rows as used.
    pub fn lrows(&self) -> usize {
        if self.t {
            self.cols
        } else {
            self.rows
        }
    }
    /// Columns as used.
    pub fn lcols(&self) -> usize {
        if self.t {
            self.rows
        } else {
            self.cols
        }
    }
}
