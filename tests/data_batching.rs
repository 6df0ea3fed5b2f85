//! Batching, epoch order, validation splits, fingerprints and augmentation.

mod data_common;

use std::collections::HashSet;

use burn::tensor::Device;
use data_common::pixels;
use distill::backend::Backend;
use distill::data::augment::{crop_with_padding, flip_horizontal};
use distill::data::{augmentation_seed, batch_order, Augmentation, DataError, Split};

fn device() -> Device {
    Backend::default_compiled().device().unwrap()
}

/// `n` images of `shape` with labels `i % classes`.
fn split(n: usize, shape: [usize; 3], classes: u32) -> Split {
    Split {
        shape,
        images: pixels(n, shape.iter().product()),
        labels: (0..n as u32).map(|i| i % classes).collect(),
    }
}

fn floats(t: burn::tensor::Tensor<4>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

#[test]
fn batch_is_normalised_to_unit_range_with_labels() {
    let s = split(10, [3, 4, 5], 10);
    let (x, y) = s.batch(&[7, 2, 9], &device(), None);
    assert_eq!(x.dims(), [3, 3, 4, 5]);
    assert_eq!(y.dims(), [3]);
    let xs = floats(x);
    let expected: Vec<f32> = [7, 2, 9]
        .iter()
        .flat_map(|&i| s.image(i).iter().map(|&v| v as f32 / 255.0))
        .collect();
    assert_eq!(xs, expected);
    assert!(xs.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert_eq!(y.into_data().iter::<i64>().collect::<Vec<_>>(), [7, 2, 9]);

    // the extremes map exactly to 0 and 1
    let edge = Split {
        shape: [1, 1, 2],
        images: vec![0, 255],
        labels: vec![0],
    };
    assert_eq!(floats(edge.batch(&[0], &device(), None).0), [0.0, 1.0]);
}

#[test]
fn identity_augmentation_changes_nothing() {
    let s = split(6, [1, 4, 4], 3);
    let plain = floats(s.batch(&[0, 1, 2], &device(), None).0);
    let aug = Augmentation::default();
    assert!(aug.is_identity());
    assert_eq!(
        floats(s.batch(&[0, 1, 2], &device(), Some((&aug, 5))).0),
        plain
    );
}

#[test]
fn batch_order_covers_every_index_once_and_is_deterministic() {
    for (len, bs) in [(103, 10), (10, 10), (5, 7), (64, 1)] {
        let order = batch_order(len, bs, true, 42, 3);
        assert_eq!(order.len(), len.div_ceil(bs));
        assert!(order[..order.len() - 1].iter().all(|b| b.len() == bs));
        assert_eq!(order.last().unwrap().len(), len - bs * (order.len() - 1));
        let mut all: Vec<usize> = order.concat();
        all.sort_unstable();
        assert_eq!(all, (0..len).collect::<Vec<_>>());
        assert_eq!(
            order,
            batch_order(len, bs, true, 42, 3),
            "same seed and epoch, same order"
        );
    }
    let a = batch_order(100, 16, true, 1, 0).concat();
    assert_ne!(
        a,
        batch_order(100, 16, true, 1, 1).concat(),
        "epochs differ"
    );
    assert_ne!(a, batch_order(100, 16, true, 2, 0).concat(), "seeds differ");
    assert_ne!(a, (0..100).collect::<Vec<_>>(), "shuffled");
    assert_eq!(
        batch_order(100, 16, false, 1, 5).concat(),
        (0..100).collect::<Vec<_>>()
    );
    assert!(batch_order(0, 4, true, 0, 0).is_empty());
}

#[test]
fn validation_split_is_sized_disjoint_stratified_and_seeded() {
    let original = split(1000, [1, 2, 2], 10);
    let mut train = original.clone();
    let val = train.split_off_validation(0.1, 7).unwrap();
    assert_eq!((train.len(), val.len()), (900, 100));
    assert_eq!(train.images.len(), 900 * 4);
    assert_eq!(val.class_counts(10), vec![10; 10], "stratified");

    // every original image lands in exactly one part (images are distinct, so compare bytes)
    let key = |s: &Split, i: usize| (s.image(i).to_vec(), s.labels[i]);
    let train_set: HashSet<_> = (0..train.len()).map(|i| key(&train, i)).collect();
    let val_set: HashSet<_> = (0..val.len()).map(|i| key(&val, i)).collect();
    assert!(train_set.is_disjoint(&val_set));
    let all: HashSet<_> = (0..original.len()).map(|i| key(&original, i)).collect();
    assert_eq!(&train_set | &val_set, all);

    let mut again = original.clone();
    assert_eq!(
        again.split_off_validation(0.1, 7).unwrap(),
        val,
        "same seed, same split"
    );
    assert_eq!(again, train);
    let mut other = original.clone();
    assert_ne!(
        other.split_off_validation(0.1, 8).unwrap(),
        val,
        "another seed, another split"
    );

    // uneven classes: quotas still add up to round(n * fraction)
    let mut uneven = split(37, [1, 1, 1], 3);
    let v = uneven.split_off_validation(0.25, 0).unwrap();
    assert_eq!((uneven.len(), v.len()), (28, 9));
    assert_eq!(v.class_counts(3), vec![3, 3, 3]);
}

#[test]
fn validation_split_rejects_bad_fractions() {
    for (n, fraction) in [
        (10, 0.0),
        (10, 1.0),
        (10, -0.5),
        (10, f64::NAN),
        (10, 0.01),
        (10, 0.99),
        (1, 0.5),
    ] {
        let mut s = split(n, [1, 1, 1], 2);
        let err = s.split_off_validation(fraction, 0).unwrap_err();
        assert!(
            matches!(err, DataError::Validation(_)),
            "{n} {fraction}: {err:?}"
        );
        assert_eq!(s.len(), n, "a failed split leaves the data untouched");
    }
}

#[test]
fn subset_and_fingerprint() {
    let s = split(20, [1, 3, 3], 4);
    let sub = s.subset(&[5, 5, 0]);
    assert_eq!(sub.labels, [1, 1, 0]);
    assert_eq!(sub.image(1), s.image(5));
    assert_eq!(sub.image(2), s.image(0));

    let fp = s.fingerprint();
    assert_eq!(fp.len(), 64);
    assert!(fp.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(fp, s.clone().fingerprint());
    let mut changed = s.clone();
    changed.images[17] ^= 1;
    assert_ne!(changed.fingerprint(), fp);
    let mut relabelled = s.clone();
    relabelled.labels[3] = 0;
    assert_ne!(relabelled.fingerprint(), fp);
    let reshaped = Split {
        shape: [1, 1, 9],
        ..s.clone()
    };
    assert_ne!(reshaped.fingerprint(), fp);
}

#[test]
fn flip_is_an_exact_mirror() {
    let shape = [2, 2, 3];
    let img: Vec<u8> = (0..12).collect();
    assert_eq!(
        flip_horizontal(&img, shape),
        [2, 1, 0, 5, 4, 3, 8, 7, 6, 11, 10, 9]
    );
    assert_eq!(flip_horizontal(&flip_horizontal(&img, shape), shape), img);

    // through batch(): with flips only, each image comes out either unchanged or mirrored, and
    // over 64 images both happen
    let s = split(64, [3, 4, 5], 10);
    let aug = Augmentation {
        crop_padding: 0,
        horizontal_flip: true,
        ..Default::default()
    };
    let indices: Vec<usize> = (0..64).collect();
    let xs = floats(s.batch(&indices, &device(), Some((&aug, 11))).0);
    let (mut flipped, mut kept) = (0, 0);
    for (i, out) in xs.chunks(60).enumerate() {
        let out: Vec<u8> = out.iter().map(|&v| (v * 255.0).round() as u8).collect();
        if out == s.image(i) {
            kept += 1;
        } else {
            assert_eq!(out, flip_horizontal(s.image(i), s.shape), "image {i}");
            flipped += 1;
        }
    }
    assert!(flipped > 10 && kept > 10, "{flipped} flipped, {kept} kept");
}

#[test]
fn crop_with_padding_shifts_and_zero_fills() {
    let shape = [1, 3, 3];
    let img = [1, 2, 3, 4, 5, 6, 7, 8, 9];
    assert_eq!(
        crop_with_padding(&img, shape, 2, 2, 2),
        img,
        "centre window is the image"
    );
    // window starts one row up and one column left of the image: shifted down-right
    assert_eq!(
        crop_with_padding(&img, shape, 1, 0, 0),
        [0, 0, 0, 0, 1, 2, 0, 4, 5]
    );
    assert_eq!(
        crop_with_padding(&img, shape, 1, 2, 2),
        [5, 6, 0, 8, 9, 0, 0, 0, 0]
    );
    assert_eq!(
        crop_with_padding(&img, shape, 1, 1, 2),
        [2, 3, 0, 5, 6, 0, 8, 9, 0]
    );
    // padding wider than the image: the corner windows are all zeros
    assert_eq!(crop_with_padding(&img, shape, 4, 0, 8), [0; 9]);
    // channels move together
    let two: Vec<u8> = (1..=8).collect();
    assert_eq!(
        crop_with_padding(&two, [2, 2, 2], 1, 2, 1),
        [3, 4, 0, 0, 7, 8, 0, 0]
    );
}

#[test]
fn augmented_batches_keep_shape_and_are_reproducible() {
    let s = split(16, [3, 8, 8], 10);
    let aug = Augmentation {
        crop_padding: 2,
        horizontal_flip: true,
        ..Default::default()
    };
    let idx = [3, 1, 4, 1, 5, 9, 2, 6];
    let (x, y) = s.batch(&idx, &device(), Some((&aug, 99)));
    assert_eq!(x.dims(), [8, 3, 8, 8]);
    assert_eq!(
        y.into_data().iter::<i64>().collect::<Vec<_>>(),
        [3, 1, 4, 1, 5, 9, 2, 6]
    );
    let a = floats(x);
    assert!(a.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert_eq!(
        a,
        floats(s.batch(&idx, &device(), Some((&aug, 99))).0),
        "same seed, same output"
    );
    assert_ne!(
        a,
        floats(s.batch(&idx, &device(), None).0),
        "augmentation did something"
    );
    assert_ne!(
        a,
        floats(s.batch(&idx, &device(), Some((&aug, 100))).0),
        "seed matters"
    );

    // an image's transform depends on (seed, image index), not on its batch position
    let alone = floats(s.batch(&[9], &device(), Some((&aug, 99))).0);
    assert_eq!(alone, a[5 * 192..6 * 192]);
    // the two copies of image 1 in the batch get the same transform
    assert_eq!(a[192..384], a[3 * 192..4 * 192]);

    assert_ne!(augmentation_seed(1, 0), augmentation_seed(1, 1));
    assert_ne!(augmentation_seed(1, 0), augmentation_seed(2, 0));
}

#[test]
fn augmentation_config_serde() {
    let aug: Augmentation =
        serde_json::from_str(r#"{"crop_padding": 4, "horizontal_flip": true}"#).unwrap();
    assert_eq!(
        aug,
        Augmentation {
            crop_padding: 4,
            horizontal_flip: true,
            ..Default::default()
        }
    );
    let partial: Augmentation = serde_json::from_str(r#"{"horizontal_flip": true}"#).unwrap();
    assert_eq!(partial.crop_padding, 0);
    assert!(serde_json::from_str::<Augmentation>(r#"{"rotate": 5}"#).is_err());
}
