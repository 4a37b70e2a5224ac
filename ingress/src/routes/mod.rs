pub mod health;
pub mod oauth;
pub mod webhooks;
