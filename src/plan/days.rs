//! Day arithmetic on dates as two functions of the plans, `days_add(date, n)` and
//! `days_between(later, earlier)`, rather than `+` and `-`: their meaning is then visible in a
//! plan, and each SQL dialect writes them its own way (see `run::dialect`).

use datafusion::arrow::array::{AsArray, Date32Array, Int64Array};
use datafusion::arrow::compute::{binary, try_binary, try_unary};
use datafusion::arrow::datatypes::{DataType, Date32Type, Int64Type};
use datafusion::arrow::error::ArrowError;
use datafusion::common::{exec_err, DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
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

/// `date` moved by `days`, or an error naming the offset when the result is not a date.
fn shifted(date: i32, days: i64) -> std::result::Result<i32, ArrowError> {
    i32::try_from(i64::from(date) + days)
        .map_err(|_| ArrowError::ComputeError(format!("a date {days} days away is out of range")))
}

/// The message of a date out of range as the engine's other errors of a run are given.
fn execution(error: ArrowError) -> DataFusionError {
    match error {
        ArrowError::ComputeError(message) => DataFusionError::Execution(message),
        other => other.into(),
    }
}

/// A column of dates (`Date32`) whatever its form: array or scalar, the scalar repeated to
/// `rows`.
fn dates(value: &ColumnarValue, rows: usize) -> Result<Date32Array> {
    let array = value.to_array(rows)?;
    match array.as_primitive_opt::<Date32Type>() {
        Some(dates) => Ok(dates.clone()),
        None => exec_err!("expected dates, found {}", array.data_type()),
    }
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
    // Adding no days is the date itself (the follow-up of an offset of 0, a window from day 0):
    // one column less to compute per row. Only where the date may be NULL too, since the
    // function's result may.
    fn simplify(&self, mut args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        let no_days = matches!(
            &args[..],
            [_, Expr::Literal(ScalarValue::Int64(Some(0)), _)]
        );
        if no_days && info.nullable(&args[0])? {
            return Ok(ExprSimplifyResult::Simplified(args.swap_remove(0)));
        }
        Ok(ExprSimplifyResult::Original(args))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [date, days] = &args.args[..] else {
            return exec_err!("{DAYS_ADD} takes a date and a number of days");
        };
        let moved: Date32Array = match days {
            // The usual form: a column of dates and a constant, one pass over the dates.
            ColumnarValue::Scalar(ScalarValue::Int64(days)) => match days {
                Some(days) => try_unary(&dates(date, args.number_rows)?, |d| shifted(d, *days))
                    .map_err(execution)?,
                None => Date32Array::new_null(args.number_rows),
            },
            _ => {
                let days = days.to_array(args.number_rows)?;
                let Some(days) = days.as_primitive_opt::<Int64Type>() else {
                    return exec_err!("expected a number of days, found {}", days.data_type());
                };
                try_binary(&dates(date, args.number_rows)?, days, shifted).map_err(execution)?
            }
        };
        Ok(ColumnarValue::Array(Arc::new(moved)))
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
        let [later, earlier] = &args.args[..] else {
            return exec_err!("{DAYS_BETWEEN} takes two dates");
        };
        let (later, earlier) = (
            dates(later, args.number_rows)?,
            dates(earlier, args.number_rows)?,
        );
        let days: Int64Array = binary(&later, &earlier, |a, b| i64::from(a) - i64::from(b))?;
        Ok(ColumnarValue::Array(Arc::new(days)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, ArrayRef};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::common::{DFSchema, ToDFSchema};
    use datafusion::logical_expr::{col, lit};
    use datafusion::prelude::SessionContext;

    /// `exprs` evaluated over one column `d` of dates and one `n` of day counts.
    async fn evaluate(
        exprs: Vec<Expr>,
        d: Vec<Option<i32>>,
        n: Vec<Option<i64>>,
    ) -> Result<Vec<ArrayRef>> {
        let frame = SessionContext::new().read_batch(
            datafusion::arrow::record_batch::RecordBatch::try_from_iter(vec![
                ("d", Arc::new(Date32Array::from(d)) as ArrayRef),
                ("n", Arc::new(Int64Array::from(n)) as ArrayRef),
            ])?,
        )?;
        let batches = frame.select(exprs)?.collect().await?;
        Ok(batches[0].columns().to_vec())
    }

    #[tokio::test]
    async fn days_are_added_to_dates_from_a_constant_or_a_column_and_null_stays_null() {
        let out = evaluate(
            vec![
                days_add(col("d"), lit(30i64)),
                days_add(col("d"), col("n")),
                days_add(col("d"), lit(ScalarValue::Int64(None))),
                days_between(col("d"), days_add(col("d"), lit(-7i64))),
                days_between(col("d"), lit(ScalarValue::Date32(Some(0)))),
            ],
            vec![Some(0), None, Some(19_000)],
            vec![Some(-1), Some(5), None],
        )
        .await
        .unwrap();
        let dates = |a: &ArrayRef| a.as_primitive::<Date32Type>().iter().collect::<Vec<_>>();
        let ints = |a: &ArrayRef| a.as_primitive::<Int64Type>().iter().collect::<Vec<_>>();
        assert_eq!(dates(&out[0]), [Some(30), None, Some(19_030)]);
        assert_eq!(dates(&out[1]), [Some(-1), None, None]);
        assert_eq!(out[2].null_count(), 3);
        assert_eq!(ints(&out[3]), [Some(7), None, Some(7)]);
        assert_eq!(ints(&out[4]), [Some(0), None, Some(19_000)]);
    }

    #[tokio::test]
    async fn a_date_moved_out_of_range_is_an_error_naming_the_days() {
        for days in [lit(i64::from(i32::MAX)), col("n")] {
            let err = evaluate(
                vec![days_add(col("d"), days)],
                vec![Some(1)],
                vec![Some(i64::MAX / 2)],
            )
            .await
            .unwrap_err()
            .to_string();
            assert!(err.contains("days away is out of range"), "{err}");
            assert!(!err.contains("Compute error"), "{err}");
        }
    }

    #[test]
    fn adding_no_days_to_a_date_that_may_be_null_is_the_date() {
        let schema = Schema::new(vec![
            Field::new("maybe", DataType::Date32, true),
            Field::new("always", DataType::Date32, false),
        ]);
        let schema: Arc<DFSchema> = Arc::new(schema.to_dfschema().unwrap());
        let info = SimplifyContext::builder().with_schema(schema).build();
        let simplified = |date: &str, days: i64| match ADD
            .simplify(vec![col(date), lit(days)], &info)
            .unwrap()
        {
            ExprSimplifyResult::Simplified(e) => Some(e),
            ExprSimplifyResult::Original(_) => None,
        };
        assert_eq!(simplified("maybe", 0), Some(col("maybe")));
        // The function's result may be NULL; a date that may not stays wrapped.
        assert_eq!(simplified("always", 0), None);
        assert_eq!(simplified("maybe", 1), None);
    }
}
