//! Credentials kept out of what is printed: the `user:password@` of a URL in any text.

/// `text` with the user information of every URL in it (`scheme://user:pass@host/…`)
/// replaced by `***`, so that an error message quoting a URL never carries its password.
pub fn userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends where the path, query, fragment or the surrounding text starts.
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(i) => {
                out.push_str("***");
                out.push_str(&authority[i..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::userinfo;

    #[test]
    fn the_user_information_of_a_url_goes() {
        assert_eq!(
            userinfo("GET http://shop:s3cr%40t@products:8001/api/products/1: timeout"),
            "GET http://***@products:8001/api/products/1: timeout"
        );
        assert_eq!(
            userinfo("failed to connect to amqp://guest:p@ss@host:5672/%2f?heartbeat=10"),
            "failed to connect to amqp://***@host:5672/%2f?heartbeat=10"
        );
        assert_eq!(
            userinfo("a=http://u:p@a b=https://c:d@e"),
            "a=http://***@a b=https://***@e"
        );
    }

    #[test]
    fn text_without_credentials_stays_as_it_is() {
        for text in [
            "GET http://localhost:8001/api/products/1 answered 500",
            "no url here",
            "mailto-like alice@example.com and http://host/a@b",
            "",
            "ends with ://",
        ] {
            assert_eq!(userinfo(text), text);
        }
    }
}
