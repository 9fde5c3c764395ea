//! Dropout between layers on the host emulation: kernels/dropout.cu (with kernels/philox.cuh)
//! against the host's pass (`backend::host::dropout`, which draws from `MaskStream`): the same
//! bits in f32 for every width (tails of the 4-unit groups) and several layers, seeds and
//! offsets, and the same factors in f16 and bf16 storage on values they hold exactly; a range of
//! steps (the layer wavefront's chunks) dropped with the factors of those steps, the other rows
//! left alone. The driver with dropout against the reference is in options_driver.rs, the
//! wavefront with dropout against the layer-by-layer order in wavefront.rs.

use super::super::emulation::Emulation;
use super::view_mut;
use crate::backend::host::dropout::Dropout;
use crate::backend::Reference;
use crate::element::Dtype;
use crate::masks::MaskStream;
use crate::{bf16, f16};

#[test]
fn the_kernel_draws_the_hosts_masks() {
    let emulation = Emulation::default();
    let exec = emulation.exec();
    for (width, batch, steps) in [(1, 1, 1), (3, 2, 4), (4, 3, 2), (5, 2, 3), (13, 4, 5), (64, 3, 2)] {
        for (p, seed, offset, layer) in [(0.3, 1, 0, 0), (0.7, 2, 5, 1), (0.05, u64::MAX, 1 << 40, 6)] {
            let d = Dropout::new(p, Some(&MaskStream::new(seed, offset))).unwrap();
            let n = steps * batch * width;
            let data: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let mut host = data.clone();
            d.apply(&Reference, layer, &mut host, batch, width).unwrap();
            let mut dev = data.clone();
            exec.dropout(0, view_mut(&mut dev), 0..steps, batch, width, &d, layer).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&dev), bits(&host), "width {width}, batch {batch}, steps {steps}, p {p}, layer {layer}");
            let dropped = host.iter().zip(&data).filter(|(h, d)| **h == 0.0 && **d != 0.0).count();
            assert!(dropped > 0 || n < 8 || p < 0.3, "nothing dropped: {n} values at p {p}");

            // 16-bit storage: ones times the factor, rounded once (exactly 0 where dropped).
            let want: Vec<f32> = {
                let mut ones = vec![1.0f32; n];
                d.apply(&Reference, layer, &mut ones, batch, width).unwrap();
                ones
            };
            let mut h16: Vec<f16> = vec![f16::ONE; n];
            emulation.exec().with_storage(Dtype::F16).dropout(0, view_mut(&mut h16), 0..steps, batch, width, &d, layer).unwrap();
            let mut b16: Vec<bf16> = vec![bf16::ONE; n];
            emulation.exec().with_storage(Dtype::BF16).dropout(0, view_mut(&mut b16), 0..steps, batch, width, &d, layer).unwrap();
            for i in 0..n {
                assert_eq!(h16[i], f16::from_f32(want[i]), "f16 {i}");
                assert_eq!(b16[i], bf16::from_f32(want[i]), "bf16 {i}");
            }
        }
    }
}

/// The steps of a sequence dropped a range at a time (the layer wavefront's chunks: `K` that
/// divides `T` and not, one step each, one range of all) give the bits of the host's pass over
/// the whole sequence: each row takes the factors of its absolute step. A range alone changes
/// its own rows only.
#[test]
fn the_kernel_drops_a_range_of_steps_with_their_masks() {
    let emulation = Emulation::default();
    let exec = emulation.exec();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let (steps, batch, width, layer) = (7, 3, 6, 2);
    let d = Dropout::new(0.4, Some(&MaskStream::new(11, 3))).unwrap();
    let data: Vec<f32> = (0..steps * batch * width).map(|i| (i as f32 * 0.61).cos() * 2.0 + 0.5).collect();
    let mut host = data.clone();
    d.apply(&Reference, layer, &mut host, batch, width).unwrap();
    let row = batch * width;
    for k in [1, 2, 3, 7, 9] {
        let mut dev = data.clone();
        for c in 0..steps.div_ceil(k) {
            let range = c * k..((c + 1) * k).min(steps);
            exec.dropout(0, view_mut(&mut dev), range.clone(), batch, width, &d, layer).unwrap();
            // Dropped up to the range's end, untouched after it.
            assert_eq!(bits(&dev[..range.end * row]), bits(&host[..range.end * row]), "K {k}: steps 0..{}", range.end);
            assert_eq!(bits(&dev[range.end * row..]), bits(&data[range.end * row..]), "K {k}: steps {}..", range.end);
        }
    }
    // A range in the middle, alone: the steps around it are left as they were.
    let mut dev = data.clone();
    exec.dropout(0, view_mut(&mut dev), 2..5, batch, width, &d, layer).unwrap();
    assert_eq!(bits(&dev[..2 * row]), bits(&data[..2 * row]));
    assert_eq!(bits(&dev[2 * row..5 * row]), bits(&host[2 * row..5 * row]));
    assert_eq!(bits(&dev[5 * row..]), bits(&data[5 * row..]));
    let dropped = (2 * row..5 * row).filter(|&i| host[i] == 0.0).count();
    assert!(dropped > 0 && dropped < 3 * row, "{dropped} of {} dropped at p 0.4", 3 * row);
}
