//! Day arithmetic on dates as two functions of the plans, `days_add(date, n)` and
//! `days_between(later, earlier)`, rather than `+` and `-`: their meaning is then visible in a
//! plan, and each SQL dialect writes them its own way (see `run::dialect`).

use datafusion::arrow::array::{Array, ArrayRef, Date32Array, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use std::sync::{Arc, LazyLock};

/// `days_add(date, n)`: the date `n` days later (earlier for negative `n`).
pub const DAYS_ADD: &str = "days_add";
/// `days_between(later, earlier)`: how many days the first date lies after the second.
pub const DAYS_BETWEEN: &str = "days_between";

#[derive(Debug, PartialEq, Eq, Hash)]
struct DaysAdd {
    signature: Signature,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct DaysBetween {
    signature: Signature,
}

static ADD: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    Arc::new(ScalarUDF::from(DaysAdd {
        signature: Signature::exact(
            vec![DataType::Date32, DataType::Int64],
            Volatility::Immutable,
        ),
    }))
});

static BETWEEN: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    Arc::new(ScalarUDF::from(DaysBetween {
        signature: Signature::exact(
            vec![DataType::Date32, DataType::Date32],
            Volatility::Immutable,
        ),
    }))
});

/// Both functions, for a session that decodes plans naming them (a cluster's scheduler and
/// executors find functions by name).
pub fn functions() -> Vec<Arc<ScalarUDF>> {
    vec![ADD.clone(), BETWEEN.clone()]
}

/// The date `days` days after `date`.
pub fn days_add(date: Expr, days: Expr) -> Expr {
    ADD.call(vec![date, days])
}

/// Days from `earlier` to `later` (negative when `later` is earlier).
pub fn days_between(later: Expr, earlier: Expr) -> Expr {
    BETWEEN.call(vec![later, earlier])
}

/// Both arguments as arrays of days since 1970-01-01, of the batch's length.
fn day_numbers(args: &ScalarFunctionArgs) -> Result<(Int64Array, Int64Array)> {
    let arrays = ColumnarValue::values_to_arrays(&args.args)?;
    let as_days = |a: &ArrayRef| -> Result<Int64Array> {
        let ints = match a.data_type() {
            DataType::Date32 => cast(&cast(a, &DataType::Int32)?, &DataType::Int64)?,
            _ => cast(a, &DataType::Int64)?,
        };
        Ok(ints
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("cast to Int64")
            .clone())
    };
    Ok((as_days(&arrays[0])?, as_days(&arrays[1])?))
}

impl ScalarUDFImpl for DaysAdd {
    fn name(&self) -> &str {
        DAYS_ADD
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Date32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (dates, days) = day_numbers(&args)?;
        let mut out = Vec::with_capacity(dates.len());
        for i in 0..dates.len() {
            if dates.is_null(i) || days.is_null(i) {
                out.push(None);
                continue;
            }
            match i32::try_from(dates.value(i) + days.value(i)) {
                Ok(d) => out.push(Some(d)),
                Err(_) => return exec_err!("a date {} days away is out of range", days.value(i)),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(Date32Array::from(out))))
    }
}

impl ScalarUDFImpl for DaysBetween {
    fn name(&self) -> &str {
        DAYS_BETWEEN
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (later, earlier) = day_numbers(&args)?;
        let out: Int64Array = later
            .iter()
            .zip(earlier.iter())
            .map(|(a, b)| Some(a? - b?))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
