use datafusion::prelude::*;
#[tokio::test]
async fn scratch() {
    let ctx = SessionContext::new();
    for q in [
        "SELECT DATE '2020-03-01' + 5 AS d",
        "SELECT DATE '2020-03-01' + INTERVAL '1 day' * 5 AS d",
        "SELECT DATE '2020-03-01' + CAST(5 AS INTEGER) * INTERVAL '1 day' AS d",
        "SELECT date_add(DATE '2020-03-01', 5) AS d",
        "SELECT greatest(DATE '2020-03-01', NULL, DATE '2020-01-01') AS d, least(NULL, DATE '2020-01-01') e",
    ] {
        match ctx.sql(q).await { Ok(df) => match df.show().await { Ok(_) => {}, Err(e) => println!("{q}: {e}") }, Err(e) => println!("{q}: {e}") }
    }
}
