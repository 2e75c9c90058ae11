//! SQL dialects for `cohortql sql`: DataFusion's, with two changes. Day arithmetic
//! (`days_add`, `days_between`) is written the way each database computes with dates. And
//! `QUALIFY` is never written: the unparser merges a filter on a window function into an
//! enclosing aggregate's `QUALIFY` when the dialect has one, which filters after grouping
//! instead of before; every dialect gets the standard form, a derived table filtered by `WHERE`.

use crate::plan::days::{DAYS_ADD, DAYS_BETWEEN};
use chrono::DateTime;
use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::datatypes::TimeUnit;
use datafusion::common::Result;
use datafusion::logical_expr::Expr;
use datafusion::sql::sqlparser::ast::VisitorMut;
use datafusion::sql::sqlparser::ast::{self, BinaryOperator, WindowFrameBound};
use datafusion::sql::unparser::dialect::{
    CharacterLengthStyle, DateFieldExtractStyle, Dialect, DistinctFromStyle, IntervalStyle,
};
use datafusion::sql::unparser::Unparser;
use std::ops::ControlFlow;
use std::sync::Arc;

/// A dialect as DataFusion defines it, with day arithmetic of its own and no `QUALIFY`.
pub struct Portable<'a> {
    pub inner: &'a dyn Dialect,
    pub kind: super::Dialect,
}

impl Portable<'_> {
    /// `days_add(d, n)` and `days_between(a, b)` in this dialect.
    fn day_arithmetic(
        &self,
        unparser: &Unparser,
        name: &str,
        args: &[Expr],
    ) -> Result<Option<ast::Expr>> {
        use super::Dialect as D;
        use datafusion::sql::sqlparser::dialect as p;
        use datafusion::sql::sqlparser::parser::Parser;
        if args.len() != 2 || (name != DAYS_ADD && name != DAYS_BETWEEN) {
            return Ok(None);
        }
        let a = unparser.expr_to_sql(&args[0])?;
        let b = unparser.expr_to_sql(&args[1])?;
        let add = name == DAYS_ADD;
        // `date + integer` exists in PostgreSQL and DuckDB; `date + bigint` does not.
        let days = if b.to_string().parse::<i32>().is_ok() {
            b.to_string()
        } else {
            format!("CAST({b} AS INTEGER)")
        };
        let text = match (self.kind, add) {
            (D::Postgres | D::Duckdb, true) => format!("({a} + {days})"),
            (D::Postgres | D::Duckdb, false) => format!("({a} - {b})"),
            (D::Mysql, true) => format!("DATE_ADD({a}, INTERVAL ({b}) DAY)"),
            (D::Mysql, false) => format!("DATEDIFF({a}, {b})"),
            (D::Bigquery, true) => format!("DATE_ADD({a}, INTERVAL ({b}) DAY)"),
            (D::Bigquery, false) => format!("DATE_DIFF({a}, {b}, DAY)"),
            (D::Sqlite, true) => format!("date({a}, printf('%+d days', {b}))"),
            (D::Sqlite, false) => format!("CAST(julianday({a}) - julianday({b}) AS INTEGER)"),
        };
        let parsed = match self.kind {
            D::Postgres => Parser::new(&p::PostgreSqlDialect {}).try_with_sql(&text),
            D::Duckdb => Parser::new(&p::DuckDbDialect {}).try_with_sql(&text),
            D::Mysql => Parser::new(&p::MySqlDialect {}).try_with_sql(&text),
            D::Bigquery => Parser::new(&p::BigQueryDialect {}).try_with_sql(&text),
            D::Sqlite => Parser::new(&p::SQLiteDialect {}).try_with_sql(&text),
        }
        .and_then(|mut parser| parser.parse_expr())
        .map_err(|e| datafusion::error::DataFusionError::Plan(format!("{text}: {e}")))?;
        Ok(Some(ast::Expr::Nested(Box::new(parsed))))
    }
}

impl Dialect for Portable<'_> {
    fn supports_qualify(&self) -> bool {
        false
    }

    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        self.inner.identifier_quote_style(identifier)
    }
    fn use_array_keyword_for_array_literals(&self) -> bool {
        self.inner.use_array_keyword_for_array_literals()
    }
    fn supports_nulls_first_in_sort(&self) -> bool {
        self.inner.supports_nulls_first_in_sort()
    }
    fn use_timestamp_for_date64(&self) -> bool {
        self.inner.use_timestamp_for_date64()
    }
    fn interval_style(&self) -> IntervalStyle {
        self.inner.interval_style()
    }
    fn float64_ast_dtype(&self) -> ast::DataType {
        self.inner.float64_ast_dtype()
    }
    fn utf8_cast_dtype(&self) -> ast::DataType {
        self.inner.utf8_cast_dtype()
    }
    fn large_utf8_cast_dtype(&self) -> ast::DataType {
        self.inner.large_utf8_cast_dtype()
    }
    fn date_field_extract_style(&self) -> DateFieldExtractStyle {
        self.inner.date_field_extract_style()
    }
    fn distinct_from_style(&self) -> DistinctFromStyle {
        self.inner.distinct_from_style()
    }
    fn character_length_style(&self) -> CharacterLengthStyle {
        self.inner.character_length_style()
    }
    fn int64_cast_dtype(&self) -> ast::DataType {
        self.inner.int64_cast_dtype()
    }
    fn int8_cast_dtype(&self) -> ast::DataType {
        self.inner.int8_cast_dtype()
    }
    fn int32_cast_dtype(&self) -> ast::DataType {
        self.inner.int32_cast_dtype()
    }
    fn timestamp_cast_dtype(&self, time_unit: &TimeUnit, tz: &Option<Arc<str>>) -> ast::DataType {
        self.inner.timestamp_cast_dtype(time_unit, tz)
    }
    fn date32_cast_dtype(&self) -> ast::DataType {
        self.inner.date32_cast_dtype()
    }
    fn supports_column_alias_in_table_alias(&self) -> bool {
        self.inner.supports_column_alias_in_table_alias()
    }
    fn requires_derived_table_alias(&self) -> bool {
        self.inner.requires_derived_table_alias()
    }
    fn division_operator(&self) -> BinaryOperator {
        self.inner.division_operator()
    }
    fn scalar_function_to_sql_overrides(
        &self,
        unparser: &Unparser,
        func_name: &str,
        args: &[Expr],
    ) -> Result<Option<ast::Expr>> {
        if let Some(sql) = self.day_arithmetic(unparser, func_name, args)? {
            return Ok(Some(sql));
        }
        self.inner
            .scalar_function_to_sql_overrides(unparser, func_name, args)
    }
    fn higher_order_function_to_sql_overrides(
        &self,
        unparser: &Unparser,
        func_name: &str,
        args: &[Expr],
    ) -> Result<Option<ast::Expr>> {
        self.inner
            .higher_order_function_to_sql_overrides(unparser, func_name, args)
    }
    fn window_func_support_window_frame(
        &self,
        func_name: &str,
        start_bound: &WindowFrameBound,
        end_bound: &WindowFrameBound,
    ) -> bool {
        self.inner
            .window_func_support_window_frame(func_name, start_bound, end_bound)
    }
    fn full_qualified_col(&self) -> bool {
        self.inner.full_qualified_col()
    }
    fn unnest_as_table_factor(&self) -> bool {
        self.inner.unnest_as_table_factor()
    }
    fn unnest_as_lateral_flatten(&self) -> bool {
        self.inner.unnest_as_lateral_flatten()
    }
    fn col_alias_overrides(&self, alias: &str) -> Result<Option<String>> {
        self.inner.col_alias_overrides(alias)
    }
    fn timestamp_with_tz_to_string(&self, dt: DateTime<Tz>, unit: TimeUnit) -> String {
        self.inner.timestamp_with_tz_to_string(dt, unit)
    }
    fn supports_empty_select_list(&self) -> bool {
        self.inner.supports_empty_select_list()
    }
    fn string_literal_to_sql(&self, s: &str) -> Option<ast::Expr> {
        // Written verbatim (a placeholder is printed as it is): sqlparser's own quoting leaves
        // a quote after a backslash undoubled, which ends the literal early in PostgreSQL.
        Some(ast::Expr::value(ast::Value::Placeholder(string_literal(
            self.kind, s,
        ))))
    }
}

/// Text as a string literal of the dialect, whatever characters it holds: quotes doubled;
/// backslashes kept literal however the server is configured; line breaks escaped where the
/// dialect cannot hold them raw.
pub fn string_literal(kind: super::Dialect, text: &str) -> String {
    use super::Dialect as D;
    let doubled = |t: &str| format!("'{}'", t.replace('\'', "''"));
    match kind {
        // With `standard_conforming_strings` off, a backslash escapes in '…' too; E'…' escapes
        // the same way under either setting.
        D::Postgres if text.contains('\\') => {
            format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        // MySQL escapes with backslashes unless NO_BACKSLASH_ESCAPES is set: a backslash is
        // written as character 92, which means the same in either mode.
        D::Mysql if text.contains('\\') => {
            let parts: Vec<String> = text.split('\\').map(doubled).collect();
            format!(
                "CONCAT({})",
                parts.join(", CONVERT(CHAR(92) USING utf8mb4), ")
            )
        }
        D::Bigquery => {
            let mut out = String::from("'");
            for c in text.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\'' => out.push_str("\\'"),
                    // A quoted string may not span lines in BigQuery.
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
            out.push('\'');
            out
        }
        D::Postgres | D::Mysql | D::Duckdb | D::Sqlite => doubled(text),
    }
}

/// Drops the qualifiers of derived tables (`t12.`, `d3.`) and stage tables
/// (`cohortql_entries.`) from column references and wildcards. Every column a study's plans
/// create has a name unique in its query, so an unqualified reference resolves the same in any
/// scope; the unparser, which merges nested selects, sometimes keeps a qualifier whose derived
/// table it merged away. Columns of the OMOP tables keep theirs.
pub struct Unqualify;

fn merged_away(qualifier: &str) -> bool {
    let derived = |p: char| {
        qualifier
            .strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    derived('d') || derived('t') || qualifier.starts_with("cohortql_")
}

impl VisitorMut for Unqualify {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut ast::Expr) -> ControlFlow<()> {
        if let ast::Expr::CompoundIdentifier(parts) = expr {
            if let [qualifier, column] = parts.as_slice() {
                if merged_away(&qualifier.value) {
                    *expr = ast::Expr::Identifier(column.clone());
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &mut ast::Select) -> ControlFlow<()> {
        for item in &mut select.projection {
            if let ast::SelectItem::QualifiedWildcard(
                ast::SelectItemQualifiedWildcardKind::ObjectName(name),
                options,
            ) = item
            {
                if let [ast::ObjectNamePart::Identifier(q)] = name.0.as_slice() {
                    if merged_away(&q.value) {
                        *item = ast::SelectItem::Wildcard(options.clone());
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }
}
