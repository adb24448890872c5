//! The vector-Jacobian product of each ONNX op family and the table that finds it
//! ([`rule`]): adding an op's gradient is a change in this file only (heavier helpers a family
//! needs, such as the convolution's, live with the builder in the parent module).

use super::*;

/// A family's rule: node `n`, the gradient `g` of its first output, and which of its inputs
/// need a gradient (`want`); returns `(input index, gradient tensor)` pairs.
pub(super) type Rule<'a> = fn(&mut Builder<'a>, &NodeProto, &str, &[bool]) -> Result<Vec<(usize, String)>>;

/// The rule for `op_type`, if the gradient builder knows it: every op type with a rule, by
/// family.
pub(super) fn rule<'a>(op_type: &str) -> Option<Rule<'a>> {
    let rules: [(&[&str], Rule<'a>); 7] = [
        (&["Identity", "Dropout"], Builder::pass_through_vjp),
        (&["Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh"], Builder::activation_vjp),
        (&["Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Pad"], Builder::layout_vjp),
        (&["BatchNormalization"], Builder::batch_norm_vjp),
        (&["GlobalAveragePool", "ReduceMean", "AveragePool", "MaxPool"], Builder::pooling_vjp),
        (&["Gemm", "MatMul", "Conv"], Builder::linear_vjp),
        (&["Add", "Sum", "Sub", "Mul", "Div"], Builder::elementwise_vjp),
    ];
    rules.into_iter().find(|(ops, _)| ops.contains(&op_type)).map(|(_, rule)| rule)
}

/// A family's rule called for an op of another family: the table above and the rule disagree.
fn not_in_family(n: &NodeProto) -> Error {
    unsupported(n, "the gradient rule it was sent to is for other ops (a bug in rules.rs)")
}

/// Refuses gradients with respect to any input but the first (`what` names them).
fn only_first(n: &NodeProto, want: &[bool], what: &str) -> Result<()> {
    match want.iter().skip(1).any(|&w| w) {
        true => Err(unsupported(n, &format!("gradients with respect to its {what}"))),
        false => Ok(()),
    }
}

impl Builder<'_> {
    /// Identity and Dropout: the gradient passes unchanged.
    pub(super) fn pass_through_vjp(&mut self, n: &NodeProto, g: &str, _want: &[bool]) -> Result<Vec<(usize, String)>> {
        Ok(match n.op_type.as_str() {
            "Identity" | "Dropout" => vec![(0, g.to_string())],
            _ => return Err(not_in_family(n)),
        })
    }

    /// Element-wise activations: a mask (`Greater` + `Where`) or a product with the derivative.
    pub(super) fn activation_vjp(&mut self, n: &NodeProto, g: &str, want: &[bool]) -> Result<Vec<(usize, String)>> {
        let x = n.input.first().map(String::as_str).unwrap_or("");
        let y = n.output[0].as_str();
        Ok(match n.op_type.as_str() {
            "Relu" => {
                let zero = self.scalar(0.0);
                // The form our CPU kernels recognise and run in one pass.
                vec![(0, ichseg_cpu_kernels::relu_grad::emit_onnx(|op, ins| self.op(op, ins, vec![]), y, g, &zero))]
            }
            "LeakyRelu" => {
                let (zero, alpha) = (self.scalar(0.0), self.scalar(attr_f(n, "alpha", 0.01)));
                let mask = self.op("Greater", &[x, &zero], vec![]);
                let leak = self.op("Mul", &[g, &alpha], vec![]);
                vec![(0, self.op("Where", &[&mask, g, &leak], vec![]))]
            }
            "Clip" => {
                only_first(n, want, "bounds")?;
                let (lo, hi) = if self.opset < 11 {
                    (Some(self.scalar(attr_f(n, "min", f32::MIN))), Some(self.scalar(attr_f(n, "max", f32::MAX))))
                } else {
                    let bound = |i: usize| n.input.get(i).filter(|s| !s.is_empty()).cloned();
                    (bound(1), bound(2))
                };
                // hardtanh's rule (ReLU6): the gradient passes strictly inside the bounds
                let mut mask: Option<String> = None;
                for (b, cmp) in [(lo, "Greater"), (hi, "Less")] {
                    if let Some(b) = b {
                        let m = self.op(cmp, &[x, &b], vec![]);
                        mask = Some(match mask {
                            Some(prev) => self.op("And", &[&prev, &m], vec![]),
                            None => m,
                        });
                    }
                }
                match mask {
                    Some(m) => {
                        let zero = self.scalar(0.0);
                        vec![(0, self.op("Where", &[&m, g, &zero], vec![]))]
                    }
                    None => vec![(0, g.to_string())],
                }
            }
            "Sigmoid" => {
                let one = self.scalar(1.0);
                let one_minus = self.op("Sub", &[&one, y], vec![]);
                let d = self.op("Mul", &[y, &one_minus], vec![]);
                vec![(0, self.op("Mul", &[g, &d], vec![]))]
            }
            "Tanh" => {
                let one = self.scalar(1.0);
                let sq = self.op("Mul", &[y, y], vec![]);
                let d = self.op("Sub", &[&one, &sq], vec![]);
                vec![(0, self.op("Mul", &[g, &d], vec![]))]
            }
            _ => return Err(not_in_family(n)),
        })
    }

    /// Ops that only move values: the inverse move of the gradient.
    pub(super) fn layout_vjp(&mut self, n: &NodeProto, g: &str, want: &[bool]) -> Result<Vec<(usize, String)>> {
        let x = n.input.first().map(String::as_str).unwrap_or("");
        let y = n.output[0].as_str();
        Ok(match n.op_type.as_str() {
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => {
                only_first(n, want, "shape input")?;
                let s = self.op("Shape", &[x], vec![]);
                vec![(0, self.op("Reshape", &[g, &s], vec![]))]
            }
            "Transpose" => {
                let rank = self.shape(x)?.len();
                let perm = attr_ints(n, "perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
                let mut inv = vec![0i64; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inv[p as usize] = i as i64;
                }
                vec![(0, self.transpose(g, &inv))]
            }
            "Concat" => {
                let rank = self.shape(y)?.len() as i64;
                let axis = attr_i(n, "axis", 0);
                let axis = if axis < 0 { axis + rank } else { axis };
                let mut offset = 0i64;
                let mut grads = vec![];
                for (i, input) in n.input.iter().enumerate() {
                    let size = self.shape(input)?[axis as usize] as i64;
                    if want[i] {
                        grads.push((i, self.slice(g, &[offset], &[offset + size], &[axis], None)));
                    }
                    offset += size;
                }
                grads
            }
            "Pad" => {
                only_first(n, want, "pads or value")?;
                let mode = attr_s(n, "mode").unwrap_or_else(|| "constant".into());
                if mode != "constant" || n.input.get(3).is_some_and(|a| !a.is_empty()) {
                    return Err(unsupported(n, &format!("mode {mode:?} or explicit axes")));
                }
                let pads = match n.input.get(1).filter(|s| !s.is_empty()) {
                    Some(p) => self.const_i64_of(n, p)?,
                    None => attr_ints(n, "pads").unwrap_or_default(),
                };
                let xs = self.shape(x)?;
                let r = xs.len();
                // (a static slice of the batch axis would fix the batch size)
                if pads.len() != 2 * r || pads.iter().any(|&p| p < 0) || pads[0] != 0 || pads[r] != 0 {
                    return Err(unsupported(n, &format!("pads {pads:?}")));
                }
                let starts: Vec<i64> = pads[1..r].to_vec();
                let ends: Vec<i64> = (1..r).map(|i| pads[i] + xs[i] as i64).collect();
                let axes: Vec<i64> = (1..r as i64).collect();
                vec![(0, self.slice(g, &starts, &ends, &axes, None))]
            }
            _ => return Err(not_in_family(n)),
        })
    }

    /// Inference-mode batch normalisation: a per-channel scale.
    pub(super) fn batch_norm_vjp(&mut self, n: &NodeProto, g: &str, want: &[bool]) -> Result<Vec<(usize, String)>> {
        let x = n.input.first().map(String::as_str).unwrap_or("");
        Ok(match n.op_type.as_str() {
            "BatchNormalization" => {
                only_first(n, want, "scale, bias, mean or variance")?;
                if attr_i(n, "training_mode", 0) != 0 {
                    return Err(unsupported(n, "training_mode=1 (only inference-mode batch norm)"));
                }
                let rank = self.shape(x)?.len();
                let eps = self.scalar(attr_f(n, "epsilon", 1e-5));
                let var_eps = self.op("Add", &[&n.input[4], &eps], vec![]);
                let std = self.op("Sqrt", &[&var_eps], vec![]);
                let k = self.op("Div", &[&n.input[1], &std], vec![]);
                let mut shape = vec![-1i64];
                shape.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
                let k = self.reshape(&k, &shape);
                vec![(0, self.op("Mul", &[g, &k], vec![]))]
            }
            _ => return Err(not_in_family(n)),
        })
    }

    /// Averages and maxima over windows or axes: the gradient spread back.
    pub(super) fn pooling_vjp(&mut self, n: &NodeProto, g: &str, want: &[bool]) -> Result<Vec<(usize, String)>> {
        let x = n.input.first().map(String::as_str).unwrap_or("");
        Ok(match n.op_type.as_str() {
            "GlobalAveragePool" => {
                let xs = self.shape(x)?;
                let count = self.scalar(product(&xs[2..]) as f32);
                let s = self.op("Shape", &[x], vec![]);
                let e = self.op("Expand", &[g, &s], vec![]);
                vec![(0, self.op("Div", &[&e, &count], vec![]))]
            }
            "ReduceMean" => {
                only_first(n, want, "axes")?;
                let xs = self.shape(x)?;
                let r = xs.len() as i64;
                let axes = match n.input.get(1).filter(|s| !s.is_empty()) {
                    Some(a) => self.const_i64_of(n, a)?,
                    None => attr_ints(n, "axes").unwrap_or_default(),
                };
                let mut axes: Vec<usize> = axes.iter().map(|&a| if a < 0 { a + r } else { a } as usize).collect();
                if axes.is_empty() {
                    if attr_i(n, "noop_with_empty_axes", 0) != 0 {
                        return Ok(vec![(0, g.to_string())]);
                    }
                    axes = (0..xs.len()).collect();
                }
                let mut g = g.to_string();
                if attr_i(n, "keepdims", 1) == 0 {
                    let kept: Vec<i64> = (0..xs.len())
                        .map(|i| match (i, axes.contains(&i)) {
                            (_, true) => 1,
                            (0, false) => -1,
                            (_, false) => xs[i] as i64,
                        })
                        .collect();
                    g = self.reshape(&g, &kept);
                }
                let count = self.scalar(axes.iter().map(|&a| xs[a]).product::<usize>() as f32);
                let s = self.op("Shape", &[x], vec![]);
                let e = self.op("Expand", &[&g, &s], vec![]);
                vec![(0, self.op("Div", &[&e, &count], vec![]))]
            }
            "AveragePool" => vec![(0, self.average_pool_vjp(n, g)?)],
            "MaxPool" => vec![(0, self.max_pool_vjp(n, g)?)],
            _ => return Err(not_in_family(n)),
        })
    }

    /// Matrix products and convolutions, with respect to their data input (and MatMul's both).
    pub(super) fn linear_vjp(&mut self, n: &NodeProto, g: &str, want: &[bool]) -> Result<Vec<(usize, String)>> {
        let x = n.input.first().map(String::as_str).unwrap_or("");
        let y = n.output[0].as_str();
        Ok(match n.op_type.as_str() {
            "Gemm" => self.gemm_vjp(n, g, want)?,
            "MatMul" => {
                let (a, b) = (n.input[0].as_str(), n.input[1].as_str());
                let (ra, rb) = (self.shape(a)?.len(), self.shape(b)?.len());
                let mut grads = vec![];
                if want[0] {
                    if rb != 2 {
                        return Err(unsupported(n, "a gradient through A with a B of rank other than 2"));
                    }
                    let bt = self.transpose(b, &[1, 0]);
                    grads.push((0, self.op("MatMul", &[g, &bt], vec![])));
                }
                if want[1] {
                    if ra != 2 || rb != 2 {
                        return Err(unsupported(n, "a gradient through B with operands of rank other than 2"));
                    }
                    let at = self.transpose(a, &[1, 0]);
                    grads.push((1, self.op("MatMul", &[&at, g], vec![])));
                }
                grads
            }
            "Conv" => {
                if want.iter().skip(1).any(|&w| w) {
                    return Err(unsupported(n, "gradients with respect to its weights or bias"));
                }
                let (xs, ys) = (self.shape(x)?, self.shape(y)?);
                let w_shape = self.shape(&n.input[1])?;
                let window = KernelGeometry::of(n, w_shape[2..].to_vec(), &xs)?;
                let group = attr_i(n, "group", 1).max(1) as usize;
                let w = self.const_f32_of(n, &n.input[1])?;
                vec![(0, self.conv_input_grad(g, &w, &w_shape, group, &window, &xs, &ys)?)]
            }
            _ => return Err(not_in_family(n)),
        })
    }
}
