use std::fmt;

/// Dimensions of a row-major tensor, outermost first.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    /// Joining `other` to this shape along `axis` (two 1-d or 2-d shapes
    /// equal elsewhere), seen as rows of `ca + cb` values: `(rows, ca, cb,
    /// the joined shape)`.
    pub fn concat(&self, other: &Shape, axis: usize) -> crate::error::Result<(usize, usize, usize, Shape)> {
        let (da, db) = (self.dims(), other.dims());
        let fits = da.len() == db.len()
            && (1..=2).contains(&da.len())
            && axis < da.len()
            && da.iter().zip(db).enumerate().all(|(k, (x, y))| k == axis || x == y);
        if !fits {
            return Err(crate::error::Error::shape_mismatch(
                "concat",
                self,
                other,
                format!("1-d or 2-d tensors equal except along axis {axis}"),
            ));
        }
        let mut out = da.to_vec();
        out[axis] += db[axis];
        Ok(if axis == 0 {
            (1, self.numel(), other.numel(), out.into())
        } else {
            (da[0], da[1], db[1], out.into())
        })
    }

    /// The shape of a 0-d tensor (a scalar such as `alpha` or `pe_scale`).
    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// The size of the last dimension (1 for a scalar).
    pub fn last(&self) -> usize {
        self.0.last().copied().unwrap_or(1)
    }

    /// Elements per step of the last dimension: the product of all but the last.
    pub fn rows(&self) -> usize {
        self.numel() / self.last().max(1)
    }

    /// Whether `other` equals a trailing run of this shape's dimensions, so it
    /// broadcasts over the leading ones (a bias over rows, a table over a batch).
    pub fn ends_with(&self, other: &Shape) -> bool {
        self.0.ends_with(&other.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}

impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}

impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}
