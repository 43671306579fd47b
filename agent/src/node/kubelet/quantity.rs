//! Kubernetes resource quantities (`100m`, `0.5`, `64Mi`, `1G`, `129e6`), parsed exactly and
//! read back as kubelet reads them: `MilliValue` and `Value`, rounded up.

/// A Kubernetes quantity string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {value:?}: {reason}")]
pub struct QuantityError {
    /// The text as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A parsed, non-negative Kubernetes quantity: `mantissa × 10^exp10 × 2^exp2`, exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

impl Quantity {
    /// Parses `100m`, `0.5`, `2`, `64Mi`, `1G`, `129e6`, `1.5Gi`, plain integers. Negative
    /// quantities are rejected: no resource the kubelet reads may be negative.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let err = |reason| QuantityError {
            value: text.to_owned(),
            reason,
        };
        let s = text.trim();
        let s = s.strip_prefix('+').unwrap_or(s);
        if s.starts_with('-') {
            return Err(err("negative quantities are not allowed"));
        }
        let num_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(num_end);
        if number.is_empty() || number == "." {
            return Err(err("missing number"));
        }
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if frac_part.contains('.') {
            return Err(err("more than one decimal point"));
        }
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 36 {
            return Err(err("too many digits"));
        }
        let mantissa: u128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| err("invalid number"))?
        };
        let frac_len = i32::try_from(frac_part.len()).map_err(|_| err("too many digits"))?;
        let (exp10, exp2) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            s if s.starts_with(['e', 'E']) => {
                let exp = &s[1..];
                let exp = exp.strip_prefix('+').unwrap_or(exp);
                let e: i32 = exp.parse().map_err(|_| err("invalid exponent"))?;
                if !(-100..=100).contains(&e) {
                    return Err(err("exponent out of range"));
                }
                (e, 0)
            }
            _ => return Err(err("unknown suffix")),
        };
        Ok(Self {
            mantissa,
            exp10: exp10 - frac_len,
            exp2,
        })
    }

    /// Whether the quantity is zero.
    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// The value in thousandths, rounded up (Kubernetes `MilliValue`).
    pub fn milli_value(&self) -> u64 {
        self.exact_ceil(3)
    }

    /// The value in whole units, rounded up (Kubernetes `Value`).
    pub fn value(&self) -> u64 {
        self.exact_ceil(0)
    }

    /// Exact `ceil(self × 10^scale)`, saturating at `u64::MAX`.
    fn exact_ceil(&self, scale: i32) -> u64 {
        let exp = self.exp10 + scale;
        let mut value = self.mantissa;
        for _ in 0..self.exp2 {
            value = match value.checked_mul(2) {
                Some(v) => v,
                None => return u64::MAX,
            };
        }
        if exp >= 0 {
            for _ in 0..exp {
                value = match value.checked_mul(10) {
                    Some(v) => v,
                    None => return u64::MAX,
                };
            }
            return u64::try_from(value).unwrap_or(u64::MAX);
        }
        let mut divisor: u128 = 1;
        for _ in 0..(-exp) {
            divisor = match divisor.checked_mul(10) {
                Some(d) => d,
                // The divisor exceeds any representable value: the result is 0 or 1.
                None => return u64::from(value != 0),
            };
        }
        u64::try_from(value.div_ceil(divisor)).unwrap_or(u64::MAX)
    }
}
