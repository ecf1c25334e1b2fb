//! A device buffer whose length can change within what was allocated: the graph's
//! activations are allocated once, for the largest micro-batch, and each pass sets the
//! lengths it uses, so launchers see exact shapes and nothing is allocated per pass.

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop};
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

pub struct DevBuf<E> {
    pub(crate) data: CudaSlice<E>,
    len: usize,
}

impl<E> DevBuf<E> {
    pub fn new(data: CudaSlice<E>, len: usize) -> DevBuf<E> {
        assert!(len <= data.len(), "a buffer's length within its allocation");
        DevBuf { data, len }
    }

    /// Elements the allocation holds.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Sets the length; false (and nothing changed) beyond the capacity.
    pub fn set_len(&mut self, len: usize) -> bool {
        let fits = len <= self.data.len();
        if fits {
            self.len = len;
        }
        fits
    }
}

impl<E> DeviceSlice<E> for DevBuf<E> {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        self.data.stream()
    }
}

impl<E> DevicePtr<E> for DevBuf<E> {
    fn device_ptr<'a>(&'a self, stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        self.data.device_ptr(stream)
    }
}

impl<E> DevicePtrMut<E> for DevBuf<E> {
    fn device_ptr_mut<'a>(&'a mut self, stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        self.data.device_ptr_mut(stream)
    }
}

/// A read-only view of part of a device buffer: the weights of one tensor. Unlike cudarc's
/// views it is `Copy`, as the graph passes a tensor's weights to several ops. Everything
/// runs on one stream in order, so a view needs no events of its own.
#[derive(Clone, Copy)]
pub struct View<'a, E> {
    ptr: CUdeviceptr,
    len: usize,
    stream: &'a Arc<CudaStream>,
    data: PhantomData<&'a E>,
}

/// A writable view of part of a device buffer: the gradients of one tensor.
pub struct ViewMut<'a, E> {
    ptr: CUdeviceptr,
    len: usize,
    stream: &'a Arc<CudaStream>,
    data: PhantomData<&'a mut E>,
}

/// The device address of element `start` of `data`.
fn address<E>(data: &CudaSlice<E>, start: usize) -> CUdeviceptr {
    let (base, _) = data.device_ptr(data.stream());
    base + (start * std::mem::size_of::<E>()) as CUdeviceptr
}

impl<'a, E> View<'a, E> {
    /// Elements `r` of `data`.
    pub fn of(data: &'a CudaSlice<E>, r: Range<usize>) -> View<'a, E> {
        assert!(
            r.start <= r.end && r.end <= data.len(),
            "a view within its buffer"
        );
        View {
            ptr: address(data, r.start),
            len: r.len(),
            stream: data.stream(),
            data: PhantomData,
        }
    }
}

impl<'a, E> ViewMut<'a, E> {
    /// Elements `r` of `data`.
    pub fn of(data: &'a mut CudaSlice<E>, r: Range<usize>) -> ViewMut<'a, E> {
        assert!(
            r.start <= r.end && r.end <= data.len(),
            "a view within its buffer"
        );
        ViewMut {
            ptr: address(data, r.start),
            len: r.len(),
            stream: data.stream(),
            data: PhantomData,
        }
    }

    /// Elements `a` and `b` of `data`, which must not overlap.
    pub fn two(
        data: &'a mut CudaSlice<E>,
        a: Range<usize>,
        b: Range<usize>,
    ) -> (ViewMut<'a, E>, ViewMut<'a, E>) {
        assert!(
            a.end <= b.start && b.end <= data.len(),
            "two views in order, within their buffer"
        );
        let view = |r: Range<usize>| ViewMut {
            ptr: address(data, r.start),
            len: r.len(),
            stream: data.stream(),
            data: PhantomData,
        };
        (view(a), view(b))
    }
}

macro_rules! device_view {
    ($t:ident) => {
        impl<E> DeviceSlice<E> for $t<'_, E> {
            fn len(&self) -> usize {
                self.len
            }
            fn stream(&self) -> &Arc<CudaStream> {
                self.stream
            }
        }
        impl<E> DevicePtr<E> for $t<'_, E> {
            fn device_ptr<'b>(&'b self, _stream: &'b CudaStream) -> (CUdeviceptr, SyncOnDrop<'b>) {
                (self.ptr, SyncOnDrop::Record(None))
            }
        }
    };
}
device_view!(View);
device_view!(ViewMut);

impl<E> DevicePtrMut<E> for ViewMut<'_, E> {
    fn device_ptr_mut<'b>(&'b mut self, _stream: &'b CudaStream) -> (CUdeviceptr, SyncOnDrop<'b>) {
        (self.ptr, SyncOnDrop::Record(None))
    }
}
