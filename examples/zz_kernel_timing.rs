use distill::kernels::{conv, pool, Window2d};
use std::time::Instant;
fn t(name: &str, mut f: impl FnMut()) {
    f();
    let n = 50;
    let s = Instant::now();
    for _ in 0..n {
        f();
    }
    println!(
        "{name}: {:.3} ms",
        s.elapsed().as_secs_f64() * 1e3 / n as f64
    );
}
fn main() {
    let x: Vec<f32> = (0..64 * 32 * 16 * 16)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let win = Window2d {
        kernel: [2, 2],
        stride: [1, 1],
        pad_begin: [0, 0],
        pad_end: [1, 1],
    };
    let g = x.clone();
    t("pool fwd 64x32x16x16", || {
        std::hint::black_box(pool::forward(&x, 64 * 32, 16, 16, &win));
    });
    t("pool bwd 64x32x16x16", || {
        std::hint::black_box(pool::backward(&x, &g, 64 * 32, 16, 16, &win));
    });
    let xin: Vec<f32> = (0..64 * 3 * 32 * 32)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let w1: Vec<f32> = (0..32 * 27).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
    let b = vec![0.1f32; 32];
    let s1 = conv::ConvShape {
        batch: 64,
        channels: 3,
        input: [32, 32],
        filters: 32,
        window: Window2d {
            kernel: [3, 3],
            stride: [2, 2],
            pad_begin: [0, 0],
            pad_end: [1, 1],
        },
    };
    let y1 = conv::forward(&xin, &w1, &b, &s1, Some(0.2));
    t("conv1 fwd", || {
        std::hint::black_box(conv::forward(&xin, &w1, &b, &s1, Some(0.2)));
    });
    t("conv1 bwd (no dx)", || {
        std::hint::black_box(conv::backward(
            &xin,
            &w1,
            &y1,
            &y1,
            &s1,
            Some(0.2),
            false,
            None,
        ));
    });
    let w2: Vec<f32> = (0..32 * 288)
        .map(|i| (i % 13) as f32 / 13.0 - 0.5)
        .collect();
    let s2 = conv::ConvShape {
        batch: 64,
        channels: 32,
        input: [16, 16],
        filters: 32,
        window: Window2d {
            kernel: [3, 3],
            stride: [2, 2],
            pad_begin: [0, 0],
            pad_end: [1, 1],
        },
    };
    let y2 = conv::forward(&x, &w2, &b, &s2, Some(0.2));
    t("conv2 fwd", || {
        std::hint::black_box(conv::forward(&x, &w2, &b, &s2, Some(0.2)));
    });
    t("conv2 bwd", || {
        std::hint::black_box(conv::backward(
            &x,
            &w2,
            &y2,
            &y2,
            &s2,
            Some(0.2),
            true,
            None,
        ));
    });

    let xt: Vec<f32> = (0..64 * 256 * 16 * 16)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let wt2: Vec<f32> = (0..256 * 2304)
        .map(|i| (i % 13) as f32 / 13.0 - 0.5)
        .collect();
    let bt = vec![0.1f32; 512];
    let st2 = conv::ConvShape {
        batch: 64,
        channels: 256,
        input: [16, 16],
        filters: 256,
        window: Window2d {
            kernel: [3, 3],
            stride: [2, 2],
            pad_begin: [0, 0],
            pad_end: [1, 1],
        },
    };
    let yt2 = conv::forward(&xt, &wt2, &bt, &st2, Some(0.2));
    t("T conv2 fwd", || {
        std::hint::black_box(conv::forward(&xt, &wt2, &bt, &st2, Some(0.2)));
    });
    t("T conv2 bwd", || {
        std::hint::black_box(conv::backward(
            &xt,
            &wt2,
            &yt2,
            &yt2,
            &st2,
            Some(0.2),
            true,
            None,
        ));
    });
    let wt3: Vec<f32> = (0..512 * 2304)
        .map(|i| (i % 13) as f32 / 13.0 - 0.5)
        .collect();
    let st3 = conv::ConvShape {
        batch: 64,
        channels: 256,
        input: [8, 8],
        filters: 512,
        window: Window2d {
            kernel: [3, 3],
            stride: [2, 2],
            pad_begin: [0, 0],
            pad_end: [1, 1],
        },
    };
    let yt3 = conv::forward(&xt[..64 * 256 * 64], &wt3, &bt, &st3, Some(0.2));
    t("T conv3 fwd", || {
        std::hint::black_box(conv::forward(
            &xt[..64 * 256 * 64],
            &wt3,
            &bt,
            &st3,
            Some(0.2),
        ));
    });
    t("T conv3 bwd", || {
        std::hint::black_box(conv::backward(
            &xt[..64 * 256 * 64],
            &wt3,
            &yt3,
            &yt3,
            &st3,
            Some(0.2),
            true,
        ));
    });
    let xt1: Vec<f32> = xin.clone();
    let wt1: Vec<f32> = (0..256 * 27)
        .map(|i| (i % 13) as f32 / 13.0 - 0.5)
        .collect();
    let st1 = conv::ConvShape {
        batch: 64,
        channels: 3,
        input: [32, 32],
        filters: 256,
        window: Window2d {
            kernel: [3, 3],
            stride: [2, 2],
            pad_begin: [0, 0],
            pad_end: [1, 1],
        },
    };
    let yt1 = conv::forward(&xt1, &wt1, &bt, &st1, Some(0.2));
    t("T conv1 fwd", || {
        std::hint::black_box(conv::forward(&xt1, &wt1, &bt, &st1, Some(0.2)));
    });
    t("T conv1 bwd", || {
        std::hint::black_box(conv::backward(
            &xt1,
            &wt1,
            &yt1,
            &yt1,
            &st1,
            Some(0.2),
            false,
        ));
    });
    let xp: Vec<f32> = xt.clone();
    let winp = Window2d {
        kernel: [2, 2],
        stride: [1, 1],
        pad_begin: [0, 0],
        pad_end: [1, 1],
    };
    t("T pool1 fwd", || {
        std::hint::black_box(pool::forward(&xp, 64 * 256, 16, 16, &winp));
    });
    t("T pool1 bwd", || {
        std::hint::black_box(pool::backward(&xp, &xp, 64 * 256, 16, 16, &winp));
    });
}
